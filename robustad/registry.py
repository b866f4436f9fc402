"""One small registry mechanism, used three times: methods, attacks, datasets.

Modelled on timm's model registry: a decorator registers a constructor under a
plain name, ``list_*("*svdd*")`` filters with shell wildcards and
``create_*(name, **kwargs)`` builds one. Third-party code registers through
the entry-point groups ``robustad.methods|attacks|datasets`` (loaded on first
lookup) or by importing a module with ``bench run --plugin MODULE``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustad.errors import UnknownNameError, UserError


@dataclass
class Entry:
    """A registered constructor and the metadata shown by ``bench list``."""

    name: str
    factory: Callable[..., Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """Constructor parameters and their defaults (``inspect.Parameter.empty`` if none)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        sig = inspect.signature(target)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def accepts_any_keyword(self) -> bool:
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


#: facts a registered class states as class attributes; ``bench list`` and the runner read
#: them from the class, so they are stated once (a decorator that repeats one must agree)
CLASS_FACTS = ("white_box", "differentiable", "stochastic", "fit_version")


def class_facts(name: str, factory: Callable, metadata: dict[str, Any]) -> dict[str, Any]:
    facts = {k: getattr(factory, k) for k in CLASS_FACTS if inspect.isclass(factory) and hasattr(factory, k)}
    for k, v in facts.items():
        if k in metadata and metadata[k] != v:
            raise ValueError(f"{name!r}: the registration says {k}={metadata[k]!r}, the class {v!r}")
    return facts


class Registry:
    """Name → constructor table with wildcard listing and close-match errors."""

    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._entry_points_loaded = False
        # Resolvers for open-ended families such as "ta:<AttackName>": prefix → function
        # returning an Entry for the full name (or raising UnknownNameError).
        self._prefix_resolvers: dict[str, Callable[[str], Entry]] = {}

    # -- registration ---------------------------------------------------
    def register(self, name: str | None = None, **metadata: Any) -> Callable:
        """Decorator: ``@registry.register("deepsvdd", paper=..., year=...)``."""

        def decorator(factory: Callable) -> Callable:
            key = (name or factory.__name__).lower()
            if key in self._entries and self._entries[key].factory is not factory:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = Entry(key, factory, {**metadata, **class_facts(key, factory, metadata)})
            return factory

        return decorator

    def register_prefix(self, prefix: str, resolver: Callable[[str], Entry]) -> None:
        self._prefix_resolvers[prefix] = resolver

    # -- lookup -----------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-ins
                raise UserError(
                    f"the {self.entry_point_group} entry point {ep.name!r} failed to load "
                    f"({exc}); fix or uninstall the package that provides it"
                ) from exc
            # An entry point may name a module (which registers on import) or a factory.
            if callable(obj) and ep.name.lower() not in self._entries:
                self._entries[ep.name.lower()] = Entry(ep.name.lower(), obj, {})

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def list(self, pattern: str | list[str] = "*") -> list[str]:
        """Registered names matching shell-style wildcard(s), sorted."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return [n for n in self.names() if any(fnmatch.fnmatch(n, p.lower()) for p in patterns)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def get(self, name: str) -> Entry:
        self._load_entry_points()
        key = name.lower()
        if key in self._entries:
            return self._entries[key]
        for prefix, resolver in self._prefix_resolvers.items():
            if key.startswith(prefix):
                return resolver(name)
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        choices = self.names()
        close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(choices)}."

    def create(self, name: str, **kwargs: Any) -> Any:
        entry = self.get(name)
        if not entry.accepts_any_keyword():
            valid = entry.parameters()
            bad = sorted(set(kwargs) - set(valid))
            if bad:
                raise UserError(
                    f"{self.kind} {entry.name!r} has no parameter(s) {', '.join(bad)}; "
                    f"valid parameters: {', '.join(valid) or 'none'}."
                )
        obj = entry.factory(**kwargs)
        # Remember the registry name on the object so results can be labelled.
        try:
            obj.registry_name = entry.name
        except AttributeError:
            pass
        return obj


METHODS = Registry("method", "robustad.methods")
ATTACKS = Registry("attack", "robustad.attacks")
DATASETS = Registry("dataset", "robustad.datasets")

register_method = METHODS.register
register_attack = ATTACKS.register
register_dataset = DATASETS.register


def list_methods(pattern: str | list[str] = "*") -> list[str]:
    return METHODS.list(pattern)


def list_attacks(pattern: str | list[str] = "*") -> list[str]:
    return ATTACKS.list(pattern)


def list_datasets(pattern: str | list[str] = "*") -> list[str]:
    return DATASETS.list(pattern)


def load_plugin(module: str) -> None:
    """Import a module (or a ``path/to/file.py``) so its ``@register_*`` calls run."""
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise UserError(f"plugin file {module} does not exist; give a module name or a .py path")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        return
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # plugins next to the user's working directory
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UserError(
            f"plugin module {module!r} could not be imported ({exc}); check the name and "
            "that it is on PYTHONPATH or in the current folder"
        ) from exc
