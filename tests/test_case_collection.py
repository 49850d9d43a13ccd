"""A backend is held to the methods it claims: cases that pass ``method="log"`` are collected only when the
backend's ``METHODS`` names ``log`` (the layer and model refusals of log-space inputs included)."""

from __future__ import annotations

import types

import pytest

import linrec
from linrec.conformance.case import log_method_of
from linrec.conformance.runner import collect


@pytest.mark.parametrize("case_id, expected", [
    ("mingru/bad-input/lengths-with-log", ("log",)),
    ("mingru/bad-input/log-zero-state", ("log",)),
    ("gated_linear_rnn/equals-reference/log-domain[log,float32]", ("log",)),
    ("mingru_lm/generation-logits/glu[float32]", ()),
    ("gated_linear_rnn_lm/generation/greedy-logits-equal-full-pass/default[step,float32]", ()),
    ("mingru/equals-reference/identity[associative,float32]", ()),
])
def test_log_method_of_reads_the_id(case_id, expected):
    assert log_method_of(case_id) == expected


def test_a_backend_without_log_is_not_held_to_log_cases():
    full = linrec.get_backend("numpy")
    no_log = types.ModuleType("no_log_backend")
    no_log.__dict__.update({k: v for k, v in vars(full).items() if not k.startswith("__")})
    no_log.METHODS = tuple(m for m in full.METHODS if m != "log")
    with_log = {c.id for c in collect(full)}
    without = {c.id for c in collect(no_log)}
    dropped = with_log - without
    assert "mingru/bad-input/lengths-with-log" in dropped
    assert "gated_linear_rnn_lm/bad-input/lengths-with-log[float32]" in dropped
    assert "mingru_stack/bad-input/log-negative-state" in dropped
    assert all(log_method_of(i) for i in dropped), sorted(i for i in dropped if not log_method_of(i))
    assert not any(log_method_of(i) and not i.startswith("scan") for i in without)
