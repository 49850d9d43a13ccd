"""linrec changes no framework's global settings: importing and using every backend leaves JAX's config, torch's
defaults and NumPy's error and print settings as they were (recurrence.md §5).

Runs in a fresh interpreter: the frameworks are imported first (their own import effects are not linrec's), the
settings recorded, every bundled backend imported and used (a scan, a layer's forward and backward pass, float32;
in JAX also a float64 scan inside ``jax.enable_x64(True)``), and the settings recorded again. The conformance runner
is held to the same rule: 64-bit mode only around the cases that need it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")
pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import json
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    try:  # torch imports sympy on first use, and sympy's import adds a warning filter: not linrec's doing
        import sympy  # noqa: F401
    except ImportError:
        pass


    def settings():
        jax_config = {k: repr(v) for k, v in jax.config.values.items()}
        for k in ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                  "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_disable_jit", "jax_debug_nans"):
            jax_config["effective:" + k] = repr(getattr(jax.config, k))  # context managers included
        return {
            "jax": jax_config,
            "torch": {
                "default_dtype": str(torch.get_default_dtype()),
                "default_device": str(torch.get_default_device()),
                "num_threads": torch.get_num_threads(),
                "num_interop_threads": torch.get_num_interop_threads(),
                "deterministic": torch.are_deterministic_algorithms_enabled(),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "grad_enabled": torch.is_grad_enabled(),
                "anomaly": torch.is_anomaly_enabled(),
            },
            "numpy": {"err": np.geterr(), "print": repr(np.get_printoptions()), "bufsize": np.getbufsize()},
            "warning_filters": [repr(f) for f in warnings.filters],
        }


    before = settings()

    import linrec.backends.jax as J
    import linrec.backends.numpy as N
    import linrec.backends.torch as T
    from linrec.spec.mingru import MinGRUConfig, init_params

    after_import = settings()
    defaults_after_import = [str(jnp.arange(3).dtype), str(jnp.zeros(2).dtype), str(jnp.asarray(1.5).dtype)]

    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1, (2, 5, 3)).astype(np.float32)
    b = rng.standard_normal((2, 5, 3)).astype(np.float32)
    config = MinGRUConfig(d_model=4, candidate="g")
    params = init_params(config, seed=0)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    dtypes = {}

    # numpy: scan, its VJP, a layer's forward pass
    h, _ = N.linear_scan(a, b)
    N.linear_scan_vjp(a, b, np.ones_like(b))
    dtypes["numpy"] = [str(h.dtype), str(N.mingru(params, x, config=config)[0].dtype)]

    # jax: scan, a layer's forward and backward pass (float32, x64 off), a float64 scan inside the scope
    h, _ = J.linear_scan(J.asarray(a), J.asarray(b))
    y, _ = J.mingru(params, jnp.asarray(x), config=config)
    g = jax.grad(lambda p: J.mingru(p, jnp.asarray(x), config=config)[0].sum())(
        {k: jnp.asarray(v) for k, v in params.items()})
    with jax.enable_x64(True):
        h64, _ = J.linear_scan(J.asarray(a.astype(np.float64)), J.asarray(b.astype(np.float64)))
    dtypes["jax"] = [J.dtype_name(h), J.dtype_name(y), J.dtype_name(g["proj.kernel"]), J.dtype_name(h64)]

    # torch: scan and a layer's forward and backward pass
    h, _ = T.linear_scan(torch.from_numpy(a), torch.from_numpy(b))
    layer = T.MinGRU.from_canonical(config, params)
    y, _ = layer(torch.from_numpy(x))
    y.sum().backward()
    dtypes["torch"] = [str(h.dtype), str(y.dtype), str(layer.proj.weight.grad.dtype)]

    after_use = settings()
    defaults_after_use = [str(jnp.arange(3).dtype), str(jnp.zeros(2).dtype), str(jnp.asarray(1.5).dtype)]
    print(json.dumps({"before": before, "after_import": after_import, "after_use": after_use,
                      "defaults_after_import": defaults_after_import, "defaults_after_use": defaults_after_use,
                      "dtypes": dtypes}))
    """
)


def _flat(settings: dict) -> dict:
    return {f"{group}.{k}": v for group, values in settings.items()
            for k, v in (values.items() if isinstance(values, dict) else [("", values)])}


def _changed(before: dict, after: dict) -> dict:
    """``{setting: (before, after)}`` for every setting that differs."""
    before, after = _flat(before), _flat(after)
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.mark.slow  # a fresh interpreter importing JAX, Flax and torch: seconds, not milliseconds
def test_importing_and_using_every_backend_changes_no_global_setting():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"]["jax"]["effective:jax_enable_x64"] == "False"
    assert _changed(out["before"], out["after_import"]) == {}
    assert _changed(out["before"], out["after_use"]) == {}
    # a user's own JAX code keeps its 32-bit defaults once linrec is imported and used
    assert out["defaults_after_import"] == out["defaults_after_use"] == ["int32", "float32", "float32"]
    assert out["dtypes"] == {
        "numpy": ["float32", "float32"],
        "jax": ["float32", "float32", "float32", "float64"],
        "torch": ["torch.float32", "torch.float32", "torch.float32"],
    }


def test_conformance_runner_enters_x64_only_for_64_bit_cases(monkeypatch):
    """The runner enters the backend's ``precision_scope`` per case: float32 cases run in JAX's default mode (what
    users have), float64 ones with x64 on, and the setting is as before once the run ends."""
    import types

    import jax

    import linrec.backends.jax as J
    from linrec.conformance import Case, Outcome, runner

    seen: dict[str, set[bool]] = {}

    def linear_scan(a, b, **kwargs):
        seen.setdefault(J.dtype_name(b), set()).add(bool(jax.config.jax_enable_x64))
        return J.linear_scan(a, b, **kwargs)

    spy = types.ModuleType("linrec_x64_spy_backend")
    for name in J.__all__:
        setattr(spy, name, getattr(J, name))
    spy.linear_scan = linear_scan
    monkeypatch.setitem(sys.modules, spy.__name__, spy)
    assert not jax.config.jax_enable_x64
    report = runner.run_backend(spy.__name__, select="scan/named/decay-half?sequential,*")
    assert report.ok and len(report.results) == 2, [(r.id, r.status, r.detail) for r in report.results]
    assert seen == {"float32": {False}, "float64": {True}}
    assert not jax.config.jax_enable_x64

    def case(id_: str, **kwargs) -> Case:
        return Case(id_, "p", "d", lambda backend: Outcome(True), **kwargs)

    assert runner.case_dtypes(case("mingru/gradient/g-half[auto,float64]")) == ("float64",)
    assert runner.case_dtypes(case("conversion/x/roundtrip[tokens,bfloat16]")) == ("bfloat16",)
    assert runner.case_dtypes(case("scan/golden/f32-basic[chunked]", dtypes=("float32",))) == ("float32",)
    assert "float64" in runner.case_dtypes(case("scan/property/equals-reference[chunked]"))  # unknown: all
    bad_input = Case("glr/bad-input/state-wrong-dtype[float32]", "bad-input", "d", lambda backend: Outcome(True))
    assert "float64" in runner.case_dtypes(bad_input)  # error cases mix in wrong dtypes
