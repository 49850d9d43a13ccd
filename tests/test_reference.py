"""The reference itself: its VJP against finite differences, cu_seqlens, combine's associativity."""

from __future__ import annotations

import numpy as np
import pytest

from linrec.spec import reference


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_resets", [False, True])
def test_reference_vjp_matches_finite_differences(reverse, with_resets):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.2, 1, (2, 5, 1)), rng.standard_normal((2, 5, 3))
    h0, ct, ct_f = rng.standard_normal((2, 3)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 3))
    resets = np.array([[False, False, True, False, False], [True, False, False, False, True]]) if with_resets else None

    def loss(a, b, h0):
        h, f = reference.linear_scan(a, b, initial_state=h0, reverse=reverse, resets=resets)
        return float((h * ct).sum() + (f * ct_f).sum())

    grads = reference.linear_scan_vjp(a, b, ct, ct_f, initial_state=h0, reverse=reverse, resets=resets)
    eps = 1e-6
    for k, x in enumerate((a, b, h0)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [a.copy(), b.copy(), h0.copy()]
            args[k][idx] += eps
            up = loss(*args)
            args[k][idx] -= 2 * eps
            numeric[idx] = (up - loss(*args)) / (2 * eps)
        np.testing.assert_allclose(grads[k], numeric, atol=1e-8)


def test_combine_is_associative():
    rng = np.random.default_rng(1)
    x, y, z = [(rng.standard_normal(4), rng.standard_normal(4)) for _ in range(3)]
    left = reference.combine(x, reference.combine(y, z))
    right = reference.combine(reference.combine(x, y), z)
    np.testing.assert_allclose(left, right, rtol=1e-12)


def test_cu_seqlens_to_resets():
    np.testing.assert_array_equal(reference.cu_seqlens_to_resets([0, 2, 5], 5), [[1, 0, 1, 0, 0]])
    with pytest.raises(ValueError, match="cu_seqlens"):
        reference.cu_seqlens_to_resets([0, 3, 2], 5)


def test_low_precision_accumulates_in_float32():
    import ml_dtypes

    a = np.full((1, 256, 1), 1.0, ml_dtypes.bfloat16)
    b = np.full((1, 256, 1), 1.0, ml_dtypes.bfloat16)
    h, _ = reference.linear_scan(a, b)
    assert h.dtype == ml_dtypes.bfloat16
    assert float(h[0, -1, 0]) == 256.0  # a bfloat16 state would stall at 256 earlier (1 ulp = 2 at 256)
