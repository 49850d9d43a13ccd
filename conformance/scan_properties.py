"""Property cases for the scan (Hypothesis), each checked against the float64 reference.

Every property runs for every method of the backend. The ``ci`` profile draws a few examples per
case with shrinking off; ``thorough`` (``linrec conformance --thorough``) draws many and shrinks a
failure to a minimal example. Shapes come from small fixed sets so compiled backends (JAX) reuse
their compilations across examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from linrec.conformance.case import Case, CaseFailure, Outcome
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many
from linrec.conformance.inputs import ScanInputs, make_scan_inputs
from linrec.spec import reference
from linrec.spec.tolerances import log_decay_sum, max_violation, tolerance_for

__all__ = ["PROFILES", "cases", "examples_run", "lacks", "profile", "set_profile"]

#: examples per property case, and whether a failure is shrunk to a minimal example; ``--thorough`` overrides the
#: count per case so that a backend gets ``runner.THOROUGH_EXAMPLES`` in all (set_profile's ``examples``)
PROFILES: dict[str, tuple[int, bool]] = {"ci": (6, False), "thorough": (150, True)}
_profile: dict[str, Any] = {"name": "ci", "examples": None}
#: calls of a property check (generated and shrinking examples), counted for the report
_examples = {"run": 0}

DTYPES = ("float32", "float64", "complex64", "complex128", "bfloat16", "float16")
STATES = ((1,), (5,), (2, 3), (2, 3, 4))
LENGTHS = (0, 1, 2, 7, 16, 33)
#: Shapes for ``method="pallas"``: Pallas's interpreter compiles each new shape (1-2 s of CPU), so its property cases
#: draw from fewer shapes (every property still runs); T = 16 and 19 span 2-3 of the interpreter's 8-step time
#: blocks, so the carry between blocks is exercised, and (2, 3) keeps the broadcast decay.
PALLAS_STATES = ((1,), (2, 3))
PALLAS_LENGTHS = (0, 1, 16, 19)


def set_profile(name: str, examples: int | None = None) -> None:
    """Select a profile of ``PROFILES``; ``examples`` overrides its examples per property case."""
    if name not in PROFILES:
        raise ValueError(f"unknown Hypothesis profile {name!r}; known: {sorted(PROFILES)}")
    if examples is not None and (not isinstance(examples, int) or examples < 1):
        raise ValueError(f"examples must be a positive int, got {examples!r}")
    _profile["name"], _profile["examples"] = name, examples


def profile() -> tuple[str, int, bool]:
    """The active profile: name, examples per property case, shrinking on or off."""
    examples, shrink = PROFILES[_profile["name"]]
    return _profile["name"], _profile["examples"] or examples, shrink


def examples_run() -> int:
    """How many examples the property checks have run in this process (a monotonic counter)."""
    return _examples["run"]


# ---------------------------------------------------------------- strategies


@st.composite
def scan_problems(draw, *, dtypes=DTYPES, positive=False, min_length=0, resets=True, direction=None,
                  states=STATES, lengths=LENGTHS, initial_state=True) -> dict:
    """A scan problem: shapes, dtype, gate regime, direction, segments and a seed (``initial_state=False``: never
    an initial state)."""
    dtype = draw(st.sampled_from(dtypes))
    state = draw(st.sampled_from(states))
    regimes = ["uniform", "near-zero", "near-one", "exact-0-1", "negative"]
    if dtype.startswith("complex"):
        regimes.append("complex")
    broadcast = draw(st.booleans()) and len(state) > 1
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": draw(st.sampled_from((1, 3))),
        "length": draw(st.sampled_from([t for t in lengths if t >= min_length])),
        "state": state,
        "dtype": dtype,
        "regime": draw(st.sampled_from(regimes)),
        "broadcast_a": (*state[:-1], 1) if broadcast else None,
        "with_initial_state": draw(st.booleans()) if initial_state else False,
        "reset_rate": draw(st.sampled_from((0.0, 0.3))) if resets else 0.0,
        "reverse": draw(st.booleans()) if direction is None else direction,
        "positive": positive,
    }


def _inputs(p: dict) -> ScanInputs:
    keys = ("batch", "length", "state", "dtype", "regime", "broadcast_a", "with_initial_state", "reset_rate",
            "positive")
    return make_scan_inputs(p["seed"], **{k: p[k] for k in keys})


def _call(backend: ModuleType, x: ScanInputs, method: str, *, reverse: bool, **over) -> tuple[np.ndarray, np.ndarray]:
    args = {"a": x.a, "b": x.b, "initial_state": x.initial_state, "resets": x.resets, **over}
    kwargs: dict[str, Any] = {"initial_state": as_backend(backend, args["initial_state"]), "reverse": reverse,
                              "method": method}
    if args["resets"] is not None:
        kwargs["resets"] = as_backend(backend, args["resets"])
    h, final = backend.linear_scan(as_backend(backend, args["a"]), as_backend(backend, args["b"]), **kwargs)
    return as_numpy(backend, h), as_numpy(backend, final)


def _reference(x: ScanInputs, reverse: bool):
    return reference.linear_scan(x.ref("a"), x.ref("b"), initial_state=x.ref("initial_state"), reverse=reverse,
                                 resets=x.resets)


def _judge(backend, x, method, reverse, got, want) -> Outcome:
    """The T-scaled tolerance first; a fast method that misses it is held to BASELINE_FACTOR (2) times the
    sequential error (§9)."""
    length = x.b.shape[1]
    decay_sum = log_decay_sum(x.a) if method == "log" else None
    outcome = compare_many([compare(n, g, w, x.dtype, method=method, length=length, log_decay_sum=decay_sum)
                            for n, g, w in zip(("h", "final_state"), got, want)])
    if outcome.passed or method in ("sequential", "log") or "sequential" not in backend.METHODS:
        return outcome
    base = _call(backend, x, "sequential", reverse=reverse)
    return compare_many([compare(n, g, w, x.dtype, method=method, length=length, baseline=b)
                         for n, g, w, b in zip(("h", "final_state"), got, want, base)])


# ---------------------------------------------------------------- properties


def equals_reference(backend, method, p) -> Outcome:
    x = _inputs(p)
    return _judge(backend, x, method, p["reverse"], _call(backend, x, method, reverse=p["reverse"]),
                  _reference(x, p["reverse"]))


def split_invariance(backend, method, p) -> Outcome:
    """Scanning x[:k] and then x[k:] from its final state equals scanning x (reverse: the tail first)."""
    x = _inputs(p)
    k = p["seed"] % (x.b.shape[1] + 1)
    rev = p["reverse"]
    first, second = (slice(k, None), slice(None, k)) if rev else (slice(None, k), slice(k, None))

    def part(sl, init):
        return ScanInputs(x.a[:, sl], x.b[:, sl], init, None, x.dtype)

    h1, f1 = _call(backend, part(first, x.initial_state), method, reverse=rev)
    if method == "log" and x.initial_state is None and k in ((x.b.shape[1],) if rev else (0,)):
        f1 = None  # nothing scanned yet: the state is still the zero state, which log spells None
    h2, f2 = _call(backend, part(second, f1), method, reverse=rev)
    h = np.concatenate([h2, h1] if rev else [h1, h2], axis=1)
    return _judge(backend, x, method, rev, (h, f2), _reference(x, rev))


def none_equals_zeros(backend, method, p) -> Outcome:
    """initial_state=None gives exactly the result of explicit zeros."""
    x = _inputs(p)
    zeros = np.zeros((x.b.shape[0], *x.b.shape[2:]), x.b.dtype)
    got_none = _call(backend, x, method, reverse=p["reverse"], initial_state=None)
    got_zero = _call(backend, x, method, reverse=p["reverse"], initial_state=zeros)
    for name, u, v in zip(("h", "final_state"), got_none, got_zero):
        if not np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True):
            err = float(np.max(np.abs(np.asarray(u, np.complex128) - np.asarray(v, np.complex128)), initial=0))
            return Outcome(False, err, 0.0, f"{name}: initial_state=None differs from zeros by {err:.3g}")
    return Outcome(True, detail="bit-identical")


def batch_isolation(backend, method, p) -> Outcome:
    """Changing row 0 of the batch leaves every other row bit-identical."""
    x = _inputs(p)
    if x.b.shape[0] < 2:
        x = _inputs({**p, "batch": 3})
    y = make_scan_inputs(p["seed"] + 1, batch=x.b.shape[0], length=x.b.shape[1], state=p["state"], dtype=x.dtype,
                         regime=p["regime"], broadcast_a=p["broadcast_a"], positive=p["positive"])
    mixed = ScanInputs(x.a.copy(), x.b.copy(), None if x.initial_state is None else x.initial_state.copy(),
                       x.resets, x.dtype)
    mixed.a[0], mixed.b[0] = y.a[0], y.b[0]
    got, alt = _call(backend, x, method, reverse=p["reverse"]), _call(backend, mixed, method, reverse=p["reverse"])
    for name, u, v in zip(("h", "final_state"), got, alt):
        if not np.array_equal(np.asarray(u)[1:], np.asarray(v)[1:], equal_nan=True):
            return Outcome(False, detail=f"{name}: rows 1.. changed when only row 0 of the input changed")
    return Outcome(True, detail="rows independent")


def reverse_is_flip(backend, method, p) -> Outcome:
    """reverse=True equals flip-scan-flip of the forward scan."""
    x = _inputs({**p, "reset_rate": 0.0})
    h_rev, f_rev = _call(backend, x, method, reverse=True)
    flipped = ScanInputs(x.a[:, ::-1].copy(), x.b[:, ::-1].copy(), x.initial_state, None, x.dtype)
    h_fwd, f_fwd = _call(backend, flipped, method, reverse=False)
    ref_h, ref_f = _reference(x, True)
    length = x.b.shape[1]
    tol = tolerance_for(x.dtype, method=method, length=length,
                        log_decay_sum=log_decay_sum(x.a) if method == "log" else None)
    # both are compared with the reference; their mutual distance may be up to twice the tolerance
    outcome = _judge(backend, x, method, True, (h_rev, f_rev), (ref_h, ref_f))
    if not outcome.passed:
        return outcome
    err, allowed = max_violation(h_fwd[:, ::-1], ref_h, tol)
    err_f, _ = max_violation(f_fwd, ref_f, tol)
    diff, _ = max_violation(h_rev, h_fwd[:, ::-1], tol)
    ok = max(err, err_f) <= 2 * allowed or diff <= 2 * allowed
    return Outcome(ok, diff, 2 * allowed, "reverse vs flip-scan-flip")


def segments_equal_loop(backend, method, p) -> Outcome:
    """A scan with resets equals scanning each segment separately (first one from initial_state)."""
    x = _inputs({**p, "reset_rate": 0.3})
    rev = p["reverse"]
    got = _call(backend, x, method, reverse=rev)
    a, b = x.ref("a"), x.ref("b")
    h = np.zeros(b.shape, b.dtype)
    finals = []
    for i in range(b.shape[0]):
        starts = [0] + [t for t in range(1, b.shape[1]) if x.resets is not None and x.resets[i, t]] + [b.shape[1]]
        segments = list(itertools.pairwise(starts))
        state = None if x.initial_state is None else x.ref("initial_state")[i : i + 1]
        final = state if state is not None else np.zeros((1, *b.shape[2:]), b.dtype)
        for n, (s, e) in enumerate(reversed(segments) if rev else segments):
            init = state if n == 0 else None
            h[i : i + 1, s:e], final = reference.linear_scan(a[i : i + 1, s:e], b[i : i + 1, s:e],
                                                             initial_state=init, reverse=rev)
        finals.append(final[0])
    want = (h, np.stack(finals) if finals else np.zeros((0, *b.shape[2:])))
    return _judge(backend, x, method, rev, got, want)


def gradient_equals_reference(backend, method, p) -> Outcome:
    """linear_scan_vjp (a, b, initial_state, with a cotangent on h and final_state) equals the reference VJP."""
    x = _inputs(p)
    rng = np.random.default_rng(p["seed"] + 7)
    ct_h = rng.standard_normal(x.b.shape).astype(x.b.dtype)
    ct_f = rng.standard_normal((x.b.shape[0], *x.b.shape[2:])).astype(x.b.dtype)
    if x.dtype.startswith("complex"):
        ct_h = ct_h + 1j * rng.standard_normal(x.b.shape).astype(x.b.dtype)
    kwargs: dict[str, Any] = {"initial_state": as_backend(backend, x.initial_state), "reverse": p["reverse"],
                              "method": method}
    if x.resets is not None:
        kwargs["resets"] = as_backend(backend, x.resets)
    got = backend.linear_scan_vjp(as_backend(backend, x.a), as_backend(backend, x.b), as_backend(backend, ct_h),
                                  as_backend(backend, ct_f), **kwargs)
    want = reference.linear_scan_vjp(x.ref("a"), x.ref("b"), ct_h.astype(np.complex128 if np.iscomplexobj(ct_h)
                                     else np.float64), ct_f.astype(np.complex128 if np.iscomplexobj(ct_f)
                                     else np.float64), initial_state=x.ref("initial_state"),
                                     reverse=p["reverse"], resets=x.resets)
    length = x.b.shape[1]
    names = ("a_bar", "b_bar", "initial_state_bar")
    if got[2] is None and "initial_state_grad" in lacks(backend, method):  # declared: judged on a_bar, b_bar only
        names, got, want = names[:2], got[:2], want[:2]
    return compare_many([compare(n, as_numpy(backend, g), w, x.dtype, method=method, length=length, grad=True)
                         for n, g, w in zip(names, got, want)])


def log_scan_equals_reference(backend, method, p) -> Outcome:
    x = _inputs(p)
    log_a, log_b = np.log(x.a), np.log(x.b)
    log_h0 = None if x.initial_state is None else np.log(x.initial_state)
    kwargs: dict[str, Any] = {"log_initial_state": as_backend(backend, log_h0), "reverse": p["reverse"],
                              "method": method}
    if x.resets is not None:
        kwargs["resets"] = as_backend(backend, x.resets)
    got = backend.log_scan(as_backend(backend, log_a), as_backend(backend, log_b), **kwargs)
    want = reference.log_scan(log_a.astype(np.float64), log_b.astype(np.float64),
                              log_initial_state=None if log_h0 is None else log_h0.astype(np.float64),
                              reverse=p["reverse"], resets=x.resets)
    length = x.b.shape[1]
    # compare in linear space: the log of a tiny state is large in magnitude but harmless
    return compare_many([compare(n, np.exp(as_numpy(backend, g).astype(np.float64)), np.exp(w), x.dtype,
                                 method="log", length=length)
                         for n, g, w in zip(("h", "final_state"), got, want)])


# ---------------------------------------------------------------- cases

#: properties whose inputs lie outside the log domain (explicit zeros, resets); scan_errors covers the refusal
_NOT_LOG_DOMAIN = ("initial-state-none-equals-zeros", "segments-equal-loop")
_REAL = ("float32", "float64", "bfloat16", "float16")
_GRAD_DTYPES = ("float32", "float64", "complex64", "complex128")

# (property, doc, check, strategy kwargs, needs)
PROPERTIES: tuple[tuple[str, str, Callable, dict, str], ...] = (
    ("equals-reference", "Every method equals the float64 reference loop (h and final_state).",
     equals_reference, {}, "linear_scan"),
    ("split-invariance", "Scanning x[:k], then x[k:] from its final state, equals scanning x, for any k.",
     split_invariance, {"resets": False}, "linear_scan"),
    ("initial-state-none-equals-zeros", "initial_state=None is bit-identical to explicit zeros.",
     none_equals_zeros, {}, "linear_scan"),
    ("batch-isolation", "Rows of the batch never influence each other.", batch_isolation, {}, "linear_scan"),
    ("reverse-is-flip", "reverse=True equals flipping time, scanning forward and flipping back.",
     reverse_is_flip, {"resets": False}, "linear_scan"),
    ("segments-equal-loop", "resets equal a loop over segments, the first from initial_state, the rest from zeros.",
     segments_equal_loop, {}, "linear_scan"),
    ("gradient-equals-reference", "The VJP w.r.t. a, b, initial_state (cotangents on h and final_state) "
     "equals the reference reverse-scan VJP.", gradient_equals_reference, {"dtypes": _GRAD_DTYPES},
     "linear_scan_vjp"),
)


#: examples between releases of JAX's compilation caches: a thorough run draws thousands of (shape, dtype, option)
#: combinations, and JAX keeps every compiled executable, which exhausted 24 GiB in ~40 000 examples (a segfault
#: in LLVM); releasing every so often keeps memory flat and costs a recompilation of the shapes still in use
RELEASE_EVERY = 2000


#: examples between checks of the process's memory maps: every compiled executable maps its own code pages, and
#: the kernel's limit on mappings (``vm.max_map_count``, 65 530 by default) ran out before memory did in a thorough
#: JAX run (LLVM "Cannot allocate memory" at 4 GB resident of 24 GiB); past half the limit the caches are released
MAPS_CHECK_EVERY = 100


def _maps_pressure(fraction: float = 0.5) -> bool:
    """Whether this process uses more than ``fraction`` of the kernel's memory-map limit (Linux only; False
    elsewhere)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    return used > limit * fraction


def _release_compilations() -> None:
    """Drop JAX's compiled executables if JAX is loaded (a backend of any name may use it); nothing otherwise."""
    import sys

    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "clear_caches"):
        jax.clear_caches()


def _hypothesis_case(check: Callable, backend_method: str, strategy) -> Callable[[ModuleType], Outcome]:
    def run(backend: ModuleType) -> Outcome:
        _, examples, shrink = profile()
        worst: list[Outcome] = []

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck),
                  phases=(Phase.generate, Phase.shrink) if shrink else (Phase.generate,))
        @given(strategy)
        def prop(p):
            _examples["run"] += 1
            run = _examples["run"]
            if run % RELEASE_EVERY == 0 or (run % MAPS_CHECK_EVERY == 0 and _maps_pressure()):
                _release_compilations()
            outcome = check(backend, backend_method, p)
            worst.append(outcome)
            if not outcome.passed:
                raise CaseFailure(f"{outcome.detail} | example: {p}")

        try:
            prop()
        except CaseFailure as err:
            bad = [o for o in worst if not o.passed]
            last = bad[-1] if bad else Outcome(False)
            return Outcome(False, last.error, last.allowed, str(err))
        return compare_many(worst) if worst else Outcome(True, detail="no examples")

    return run


def lacks(backend: ModuleType, method: str) -> dict[str, str]:
    """What ``method`` of the backend declares it lacks: ``LACKS[method]`` maps an option (``reverse``, ``resets``,
    ``initial_state``, ``initial_state_grad``, ``empty`` for T = 0) or a dtype name to the reason. Bundled backends
    lack nothing; the adapters of other projects' kernels (``linrec.conformance.adapters``) declare what the peer
    does not offer."""
    return dict(getattr(backend, "LACKS", {}).get(method, {}))


def _narrowed(kw: dict, missing: dict[str, str]) -> dict:
    """Strategy kwargs that draw only what the method offers: the properties then measure the rest, and the
    named cases of each lacking option (``scan/named/reverse[...]``, ...) say unsupported (xfail manifest)."""
    kw = dict(kw)  # a copy: the caller may update it
    if "reverse" in missing:
        kw["direction"] = False
    if "resets" in missing:
        kw["resets"] = False
    if "initial_state" in missing:
        kw["initial_state"] = False
    if "empty" in missing:  # T = 0
        kw["min_length"] = max(kw.get("min_length", 0), 1)
    dtypes = tuple(d for d in kw.get("dtypes", DTYPES) if d not in missing)
    # no dtype left: the case runs unnarrowed and reports the method's refusal
    if dtypes and len(dtypes) < len(kw.get("dtypes", DTYPES)):
        kw["dtypes"] = dtypes
    return kw


def cases(backend: ModuleType) -> list[Case]:
    out = []
    methods = getattr(backend, "METHODS", ("auto",))
    for prop, doc, check, kw, needs in PROPERTIES:
        for method in methods:
            if method == "log" and prop in _NOT_LOG_DOMAIN:
                continue
            strat_kw = _narrowed(kw, lacks(backend, method))
            if method == "pallas":
                strat_kw.update(states=PALLAS_STATES, lengths=PALLAS_LENGTHS)
            if method == "log":
                strat_kw.update(positive=True, resets=False, dtypes=tuple(d for d in strat_kw.get("dtypes", DTYPES)
                                                            if d in _REAL))
            out.append(Case(
                id=f"scan/property/{prop}[{method}]",
                property=prop,
                doc=doc,
                fn=_hypothesis_case(check, method, scan_problems(**strat_kw)),
                requires=(needs,),
                tags=("hypothesis",),
            ))
    for method in getattr(backend, "LOG_METHODS", ()):
        out.append(Case(
            id=f"scan/property/log-scan-equals-reference[{method}]",
            property="log-scan-equals-reference",
            doc="log_scan equals the float64 reference log-space loop (compared in linear space).",
            fn=_hypothesis_case(log_scan_equals_reference, method,
                                scan_problems(positive=True, dtypes=_REAL, resets=method != "heinsen")),
            requires=("log_scan",),
            tags=("hypothesis",),
        ))
    return out
