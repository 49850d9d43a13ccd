"""What ``linrec.load(path, "numpy")`` returns: the ``(config, params)`` pair that also says what runs it.

``NumpyModel`` is a 2-tuple ``(config, params)`` — so ``config, params = linrec.load(path, "numpy")`` keeps
working — with the model type and the NumPy backend's pure functions for it attached:

    model = linrec.load("model.safetensors", "numpy")
    logits, state = model.forward(tokens)          # = linrec.backends.numpy.<module>.<function>(params, tokens,
                                                   #     config=config, ...), keywords as that function's
    logits_t, state = model.step(token, state)     # its step function
    model.function                                 # "linrec.backends.numpy.mingru_lm.mingru_lm"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

import numpy as np

__all__ = ["NumpyModel", "numpy_function"]

def numpy_function(model_type: str) -> str:
    """``module:function`` of the NumPy backend's sequence function for ``model_type``: named after the model's spec
    module (``linrec.spec.X`` -> ``linrec.backends.numpy.X:X``), so GateLoop runs ``gated_linear_rnn`` (its config
    carries ``reversed``) and GateLoopLM ``gated_linear_rnn_lm``. Its step function is ``<function>_step``, its
    default state ``<function>_initial_state``."""
    from linrec.tools.layout import get_layout

    name = get_layout(model_type).spec.rsplit(".", 1)[-1]
    return f"linrec.backends.numpy.{name}:{name}"


class NumpyModel(tuple):
    """``(config, params)`` plus ``model_type`` and the NumPy functions that run them (:func:`numpy_function`).

    ``forward(inputs, **kw) -> (out, final_state)`` and ``step(input_t, state) -> (out_t, state)`` call the
    backend's functions with ``params`` and ``config=config``; ``initial_state(batch_size)`` its default state.
    """

    def __new__(cls, config: Any, params: Mapping[str, np.ndarray], model_type: str) -> NumpyModel:
        self = super().__new__(cls, (config, params))
        self._model_type = model_type
        self._function = numpy_function(model_type)  # raises LayoutError for an unknown model type
        return self

    def __getnewargs__(self) -> tuple:  # pickling and copying rebuild through __new__
        return (self[0], self[1], self._model_type)

    @property
    def config(self) -> Any:
        return self[0]

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        return self[1]

    @property
    def model_type(self) -> str:
        return self._model_type

    @property
    def function(self) -> str:
        """The dotted name of the sequence function ``forward`` calls."""
        return self._function.replace(":", ".")

    def _fn(self, suffix: str = "") -> Callable[..., Any]:
        module, _, name = self._function.partition(":")
        try:
            return getattr(import_module(module), name + suffix)
        except (ImportError, AttributeError):
            raise NotImplementedError(f"the NumPy backend has no {module}.{name}{suffix} for {self._model_type}; "
                                      "load it with backend='jax' or 'torch'") from None

    def forward(self, inputs: np.ndarray, **kwargs: Any) -> tuple[Any, Any]:
        """The model over a sequence: ``(out, final_state)``; keywords as the function's (``initial_state``,
        ``lengths``, ``mode``, ``method``, ...)."""
        return self._fn()(self.params, inputs, config=self.config, **kwargs)

    __call__ = forward

    def step(self, input_t: np.ndarray, state: Any = None) -> tuple[Any, Any]:
        """One step: ``(out_t, state)``; ``state=None`` is the default state."""
        return self._fn("_step")(self.params, input_t, state, config=self.config)

    def initial_state(self, batch_size: int, dtype: str = "float32") -> Any:
        """The default state for ``batch_size`` rows."""
        return self._fn("_initial_state")(self.config, batch_size, dtype)

    def __repr__(self) -> str:
        return f"NumpyModel({self._model_type}, {self.config!r}, {len(self.params)} tensors; runs {self.function})"
