"""The ``gradhealth`` command line: ``demo``, ``probe``, ``report``, ``lab``."""

from gradhealth.cli.main import main

__all__ = ["main"]
