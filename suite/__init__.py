"""precision-suite: the same model, weights and batches under several precision policies and
frameworks; accuracy, speed and memory per policy, with verdicts a CI can act on.

The repository folder ``suite/`` is installed as this package, ``backends/`` as
``precision_suite.backends`` and ``configs/`` as ``precision_suite.configs`` (one namespace,
no generic top-level names). ``docs/architecture.md`` describes the layers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("precision-suite")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
