"""The package version: one place, read by pyproject.toml and by the provenance of every result."""

__version__ = "0.1.0"
