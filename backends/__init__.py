"""Backend registry.

Built-ins are lazy ``"module:Class"`` strings, so ``import precision_suite.backends`` imports no framework.
Third-party backends register under the entry-point group ``precision_suite.backends``
(name = registry name, value = ``"module:Class"``) and need no change to suite code.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from precision_suite.errors import UserError

if TYPE_CHECKING:
    from precision_suite.backends.base import Backend

ENTRY_POINT_GROUP = "precision_suite.backends"

BUILTIN_BACKENDS: dict[str, str] = {
    "torch-amp": "precision_suite.backends.torch.amp:TorchAmpBackend",
    "torch-manual": "precision_suite.backends.torch.manual:TorchManualBackend",
    "tf-keras": "precision_suite.backends.keras.tf_backend:TfKerasBackend",
}


class RegistryError(UserError, ValueError):
    """An unknown or clashing backend name; the message lists what is known."""


@cache
def registry() -> dict[str, str]:
    """Every backend name → ``"module:Class"``: built-ins first, then entry points."""
    known = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in known and known[ep.name] != ep.value:
            raise RegistryError(f'backend "{ep.name}" is registered twice: {known[ep.name]} and {ep.value}')
        known[ep.name] = ep.value
    return known


def backend_names() -> list[str]:
    return list(registry())


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``. Importing it does not import its framework
    (backend modules import frameworks inside methods or are only loaded when used)."""
    known = registry()
    if name not in known:
        raise RegistryError(f'unknown backend "{name}"; known: {", ".join(known)}')
    module_name, _, attr = known[name].partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f'backend "{name}" ({known[name]}) cannot be loaded: {exc}') from None
    if getattr(cls, "name", None) != name:
        raise RegistryError(f'backend "{name}" points at {known[name]}, whose name is {cls.name!r}')
    return cls
