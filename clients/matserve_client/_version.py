"""Installed version of the package (used in the ``User-Agent`` header)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matserve-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"
