"""Conformance cases for the minLSTM layer (``spec/minlstm.md``).

The same properties, configurations and bad inputs as minGRU (``linrec.conformance.mingru_cases``),
run against ``minlstm``/``minlstm_step``/``minlstm_initial_state`` and the float64 reference
``linrec.spec.minlstm``.
"""

from __future__ import annotations

from types import ModuleType

from linrec.conformance.case import Case
from linrec.conformance.mingru_cases import CONFIGS, LayerUnderTest, layer_cases
from linrec.spec import minlstm as minlstm_spec

__all__ = ["MINLSTM", "cases"]

MINLSTM = LayerUnderTest("minlstm", minlstm_spec, minlstm_spec.MinLSTMConfig, CONFIGS)


def cases(backend: ModuleType) -> list[Case]:
    return layer_cases(backend, MINLSTM)
