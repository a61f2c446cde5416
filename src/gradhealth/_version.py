"""The installed version of gradhealth (from the package metadata, pyproject.toml's)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradhealth")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
