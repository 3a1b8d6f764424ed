"""precision-suite: the same model, weights and batches under several precision policies and
frameworks; accuracy, speed and memory per policy, with verdicts a CI can act on.

The repository folder ``suite/`` is installed as this package, ``backends/`` as
``precision_suite.backends`` and ``configs/`` as ``precision_suite.configs`` (one namespace,
no generic top-level names). ``docs/architecture.md`` describes the layers.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("precision-suite")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

# The Python API, imported on first use: ``import precision_suite`` stays cheap (no framework, no
# pydantic) — the pytest plugin (precision_suite.testing.plugin) loads it in every test session.
_LAZY = {
    "run": "precision_suite.api",
    "RunResult": "precision_suite.api",
    "RunInterrupted": "precision_suite.api",
    "UserError": "precision_suite.errors",
    "ConfigError": "precision_suite.config",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "testing":  # the subpackage, as an attribute after a plain ``import precision_suite``
        return importlib.import_module("precision_suite.testing")
    raise AttributeError(f"module 'precision_suite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "testing"])
