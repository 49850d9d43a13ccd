"""linrec: one specification of gated linear recurrences, a NumPy reference, JAX and PyTorch backends.

``import linrec`` loads no framework: backends are imported only when asked for, by
``linrec.get_backend(name)`` or by importing ``linrec.backends.<name>`` directly.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__version__ = "0.2.0"
#: Version of the normative text in ``spec/`` that this release implements.
SPEC_VERSION = "0.2"
#: The backends shipped with linrec, in the order reports list them.
BUNDLED_BACKENDS = ("numpy", "jax", "torch")

__all__ = ["BUNDLED_BACKENDS", "SPEC_VERSION", "__version__", "convert", "get_backend", "inspect", "load", "save"]

#: checkpoint functions, imported from ``linrec.tools.convert`` on first use (it loads no framework either)
_CHECKPOINT_API = ("convert", "inspect", "load", "save")


def __getattr__(name: str):
    if name in _CHECKPOINT_API:
        return getattr(import_module("linrec.tools.convert"), name)
    raise AttributeError(f"module 'linrec' has no attribute {name!r}")


def get_backend(name: str) -> ModuleType:
    """Import a backend by bundled name (``"numpy"``, ``"jax"``, ``"torch"``) or module path.

    Raises ``ImportError`` with an install hint when the framework is missing.
    """
    module_name = f"linrec.backends.{name}" if name in BUNDLED_BACKENDS else name
    try:
        return import_module(module_name)
    except ImportError as err:
        if name in ("jax", "torch"):
            raise ImportError(
                f"the {name} backend needs {name}: pip install 'linrec[{name}]' ({err})"
            ) from err
        raise
