"""The pretrained-weights contract, one place for every method with a pretrained backbone.

A method's ``weights`` parameter is one of

- ``"imagenet"``: torchvision's ImageNet weights of the named backbone, looked up by
  their canonical file name (``resnet18-f37072fd.pth``) in ``$ROBUSTAD_WEIGHTS``, then
  in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``, by default
  ``~/.cache/torch/hub/checkpoints``, where torchvision itself caches them);
- a path to a state-dict file (a plain ``state_dict``, or ``{"state_dict": ...}``;
  keys may carry a ``module.`` or ``module.model.`` prefix, as converted robust
  checkpoints do);
- ``None``: random initialisation, seeded by the fit. That is *not* the published
  method: the fit row records ``pretrained: false`` and every leaderboard cell of
  such a model carries the flag ``[random weights]``.

Nothing is downloaded unless the run allows it (``bench run --download``). The hex
run in a torchvision file name is the first 8 hex digits of the file's SHA-256
(torch.hub's convention): a file whose hash does not match is refused. Files are
loaded with ``torch.load(weights_only=True)``: arbitrary pickles (the ``dill``
checkpoints of robust ImageNet models) are never unpickled; docs/METHODS.md gives
the one-off conversion a user runs on their own file.

The SHA-256 of the weights is part of the fit job's identity, so a model fitted on
other weights is never mistaken for this one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustad.errors import UserError

_DOWNLOAD_ALLOWED = False


@contextlib.contextmanager
def downloads_allowed(allowed: bool) -> Iterator[None]:
    """Within this block, missing ``imagenet`` weights may be downloaded (``--download``)."""
    global _DOWNLOAD_ALLOWED
    before, _DOWNLOAD_ALLOWED = _DOWNLOAD_ALLOWED, bool(allowed)
    try:
        yield
    finally:
        _DOWNLOAD_ALLOWED = before


def imagenet_url(arch: str) -> str:
    """torchvision's URL of the IMAGENET1K_V1 weights of ``arch`` (no network access)."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch).IMAGENET1K_V1.url
    except (ValueError, KeyError, AttributeError) as exc:
        raise UserError(f"torchvision has no ImageNet weights for the backbone {arch!r}") from exc


def canonical_file(arch: str) -> str:
    """``resnet18`` → ``resnet18-f37072fd.pth``: torchvision's file name."""
    return imagenet_url(arch).rsplit("/", 1)[-1]


def search_dirs() -> list[Path]:
    """Where ``imagenet`` weights are looked for, in order."""
    dirs = []
    if os.environ.get("ROBUSTAD_WEIGHTS"):
        dirs.append(Path(os.environ["ROBUSTAD_WEIGHTS"]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|ckpt)$")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def check_hash_prefix(path: Path) -> str:
    """The file's SHA-256; a torchvision-style name (``…-<hex>.pth``) must match it."""
    sha = file_sha256(path)
    m = _HASH_IN_NAME.search(path.name)
    if m and not sha.startswith(m.group(1)):
        raise UserError(
            f"the weights file {path} is corrupt or not the published one: its name says "
            f"SHA-256 {m.group(1)}…, the file's is {sha[: len(m.group(1))]}…; delete it and get it again"
        )
    return sha


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from: ``source`` is explicit, ROBUSTAD_WEIGHTS,
    TORCH_HOME, download or none (random initialisation)."""

    path: Path | None
    sha256: str | None
    source: str

    @property
    def pretrained(self) -> bool:
        return self.path is not None

    def info(self) -> dict[str, object]:
        return {
            "pretrained": self.pretrained,
            "weights": str(self.path)
            if self.path
            else "random init (NOT comparable to the published method)",
            "weights_source": self.source,
            "weights_sha256": self.sha256,
        }


#: what ``weights=None`` resolves to: random initialisation (also the skeleton a checkpoint loads into)
RANDOM_INIT = ResolvedWeights(None, None, "none")


def find_imagenet(arch: str) -> tuple[Path | None, list[Path]]:
    """The canonical file of ``arch`` in the search folders (or None), and the folders."""
    name = canonical_file(arch)
    dirs = search_dirs()
    for d in dirs:
        if (d / name).is_file():
            return d / name, dirs
    return None, dirs


def resolve(arch: str, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Resolve a ``weights`` parameter; UserError (exit 2) when the file is missing or wrong."""
    if weights is None:
        return RANDOM_INIT
    if str(weights) == "imagenet":
        path, dirs = find_imagenet(arch)
        if path is None and _DOWNLOAD_ALLOWED:
            path = _download(arch, dirs[-1])
            return ResolvedWeights(path, check_hash_prefix(path), "download")
        if path is None:
            name = canonical_file(arch)
            raise UserError(
                f"the ImageNet weights of {arch} ({name}) are not in {' or '.join(str(d) for d in dirs)}: "
                f"copy {name} from {imagenet_url(arch)} into one of those folders (or set "
                f"ROBUSTAD_WEIGHTS to its folder), pass --download, or set weights: null for a "
                f"random-weights run that is not the published method"
            )
        source = (
            "ROBUSTAD_WEIGHTS"
            if os.environ.get("ROBUSTAD_WEIGHTS") and path.parent == dirs[0]
            else "TORCH_HOME"
        )
        return ResolvedWeights(path, check_hash_prefix(path), source)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"the weights file {path} does not exist (weights: give 'imagenet', a file, or null)")
    return ResolvedWeights(path.resolve(), check_hash_prefix(path), "explicit")


def _download(arch: str, folder: Path) -> Path:
    """torch.hub's download with its hash check (only under ``--download``)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / canonical_file(arch)
    m = _HASH_IN_NAME.search(target.name)
    torch.hub.download_url_to_file(imagenet_url(arch), str(target), hash_prefix=m.group(1) if m else None)
    return target


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a file, without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"the weights file {path} cannot be read as a plain state dict ({type(exc).__name__}); "
            f"convert pickled checkpoints as docs/METHODS.md describes"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    for prefix in ("module.model.", "module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def build_backbone(arch: str, resolved: ResolvedWeights) -> nn.Module:
    """A torchvision classifier ``arch`` with the resolved weights (random when none).

    Random initialisation uses torch's global RNG, which the fit seeds
    (``seeded_fit_start``). The ``fc`` layer is kept so torchvision state dicts load
    unchanged; methods use the layers they need.
    """
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    if resolved.path is not None:
        state = load_state_dict(resolved.path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise UserError(
                f"the weights file {resolved.path} does not fit torchvision's {arch}: "
                f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def weights_status(arch: str) -> str:
    """One line for ``bench list methods``: found or not, and where."""
    try:
        path, dirs = find_imagenet(arch)
    except UserError as exc:
        return str(exc)
    if path is not None:
        return f"{arch} ImageNet weights found: {path}"
    return f"{arch} ImageNet weights NOT FOUND ({canonical_file(arch)} in {', '.join(str(d) for d in dirs)})"


class PretrainedBackbone:
    """Mixin of detectors with ``backbone`` and ``weights`` parameters.

    ``weights_identity`` gives the runner the SHA-256 that joins the fit job's
    identity (resolving the weights, so missing ones stop the run before training).
    """

    @classmethod
    def weights_identity(cls, params: dict) -> str | None:
        return resolve(params["backbone"], params.get("weights")).sha256
