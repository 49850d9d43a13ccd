"""Mutation check of the conformance suite: break the scan on purpose and count how often the suite notices.

Each :class:`Mutant` is one small source edit — flip an operator, drop a term, shift an index — to the
reference loop (``spec/reference.py``), the NumPy backend's scan (``backends/numpy/scan.py``), the Pallas kernel
(``backends/jax/pallas_scan.py``, through the JAX backend's ``method="pallas"``) or the C++
kernel (``backends/native/linrec_scan.cc``). For every mutant a fresh interpreter loads the edited file in
place of the original (Python: a meta-path hook for that one module; C++: the kernel compiled from the edited
source into a temporary ``LINREC_CACHE``) and runs the conformance cases the mutant can affect. A mutant is
*killed* when some case fails or errors (a crash or a timeout also counts, and says so), and *survives*
when every case passes. The working tree is never modified.

Run (about 10 minutes on 2 busy cores; the kernel mutants dominate, one compile each)::

    python -m linrec.tools.mutants                       # all mutants, table on stdout
    python -m linrec.tools.mutants --markdown benchmarks/results/mutation.md
    python -m linrec.tools.mutants --only ref-drop-b np-seq-shift-b --select 'scan/named/*'

Exit status: 0 when every mutant is killed or has a written reason to survive (:data:`EXPECTED_SURVIVORS`),
1 otherwise (a new survivor needs a new conformance case or a reason), 2 when the unmutated baseline fails.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from linrec.backends.native import build as native_build

__all__ = ["EXPECTED_SURVIVORS", "MUTANTS", "PALLAS_MUTANTS", "TRITON_MUTANTS", "Mutant", "MutantResult",
           "all_mutants", "apply", "main", "run_mutant"]

#: The repository root (the folders of the ``linrec`` package live side by side there).
ROOT = Path(__file__).resolve().parents[1]
#: Source file (relative to ``ROOT``) -> the module it is imported as.
MODULES = {"spec/reference.py": "linrec.spec.reference", "backends/numpy/scan.py": "linrec.backends.numpy.scan",
           "backends/torch/triton_scan_kernels.py": "linrec.backends.torch.triton_scan_kernels",
           "backends/torch/triton_gated_linear_rnn_kernels.py": "linrec.backends.torch.triton_gated_linear_rnn_kernels",
           "backends/torch/triton_gateloop_mh_kernels.py": "linrec.backends.torch.triton_gateloop_mh_kernels",
           "backends/jax/pallas_scan.py": "linrec.backends.jax.pallas_scan",
           "backends/jax/pallas_gateloop_mh.py": "linrec.backends.jax.pallas_gateloop_mh"}
KERNEL = "backends/native/linrec_scan.cc"
#: The conformance runs per target: ``(backend, case selection)``. The torch backend is the one whose scan
#: gradient goes through the kernel's ``scan_bwd`` (NumPy's VJP is a second forward scan).
NUMPY_SCAN = (("numpy", "scan/*"),)
TORCH_SCAN = (("torch", "scan/*"),)
#: The torch backend's scan cases of ``method="triton"`` (Triton's interpreter on CPU; ids end in ``[triton]``).
TRITON_SCAN = (("torch", "scan/*[[]triton[]]"),)
#: The layer cases of ``method="triton"`` (the fused minGRU and GatedLinearRNN kernels; ids ``...[triton,<dtype>]``).
TRITON_MINGRU = (("torch", "mingru/*[[]triton,*"),)
TRITON_GLR = (("torch", "gated_linear_rnn/*[[]triton,*"),)
#: The fused outer-product GateLoop kernel (``gateloop_mh`` cases of ``method="triton"``: values, padding, gradients).
TRITON_GATELOOP = (("torch", "gateloop_mh/*[[]parallel-triton,*"),)
#: The Pallas kernel (interpreted on CPU) is reached through the JAX backend's ``method="pallas"`` cases.
JAX_PALLAS_SCAN = (("jax", "scan/*pallas*"),)
#: The fused GateLoop kernel (``pallas_gateloop_mh.py``) through the layer's ``method="pallas"`` cases.
JAX_PALLAS_GATELOOP = (("jax", "gateloop_mh/*pallas*"),)


@dataclass(frozen=True)
class Mutant:
    """One source edit: replace ``old`` by ``new`` once, inside ``scope``.

    ``scope`` is a top-level function name for Python files (the edit must match exactly once in its body)
    and an anchor text for the C++ kernel (the edit applies to the first match after the unique anchor).
    """

    name: str
    file: str
    scope: str
    old: str
    new: str
    kind: str  # "operator", "drop-term", "index-shift", "constant", "branch"
    runs: tuple[tuple[str, str], ...] = NUMPY_SCAN


@dataclass
class MutantResult:
    name: str
    status: str  # "killed", "survived", "invalid" (the edit does not compile/import), "baseline-failed"
    seconds: float
    detail: str = ""
    failed: list[str] = field(default_factory=list)


_REF, _NP, _CC = "spec/reference.py", "backends/numpy/scan.py", KERNEL
_PALLAS = "backends/jax/pallas_scan.py"
_PALLAS_GL = "backends/jax/pallas_gateloop_mh.py"

#: Mutants of the Pallas kernel (``method="pallas"`` of the JAX backend, run in Pallas's interpreter). The
#: off-by-one carry restarts the second time block from the initial state instead of the carry of the first
#: (visible only when T spans several blocks: the interpreter's block is 8 steps for that reason); the dropped
#: reset ignores the cut mask (the kernel receives ``a`` unzeroed at the cuts, so nothing else restarts a segment).
PALLAS_MUTANTS: tuple[Mutant, ...] = (
    Mutant("pallas-carry-off-by-one", _PALLAS, "_scan_kernel", "@pl.when(j == 0)", "@pl.when(j <= 1)",
           "index-shift", JAX_PALLAS_SCAN),
    Mutant("pallas-drop-reset", _PALLAS, "_scan_kernel", "state = out = h if cut is None else _select(cut, b, h)",
           "state = out = h", "branch", JAX_PALLAS_SCAN),
    # the fused GateLoop kernel: chunk 2 restarts from the initial state (the interpreter's chunk is 4 steps, the
    # cases' T = 5-7), the read-out drops the inter-chunk term S₀ᵀ(P_t ⊙ q_t), and the backward kernel forgets the
    # decay diag(P_{C-1}) of the state cotangent it hands to the previous chunk
    Mutant("pallas-gateloop-carry-off-by-one", _PALLAS_GL, "_forward_kernel", "@pl.when(pl.program_id(2) == 0)",
           "@pl.when(pl.program_id(2) <= 1)", "index-shift", JAX_PALLAS_GATELOOP),
    Mutant("pallas-gateloop-drop-inter-chunk", _PALLAS_GL, "_forward_kernel", "r[...] = (x + y).astype(r.dtype)",
           "r[...] = x.astype(r.dtype)", "drop-term", JAX_PALLAS_GATELOOP),
    Mutant("pallas-gateloop-adjoint-drop-decay", _PALLAS_GL, "_backward_kernel",
           "zip(g_prev, _cmul(_conj(tuple(pp[last][:, None] for pp in p)), g),", "zip(g_prev, g,", "drop-term",
           JAX_PALLAS_GATELOOP),
)

MUTANTS: tuple[Mutant, ...] = (
    # --- the reference loop (the oracle every property compares with) ---------------------------------------
    Mutant("ref-combine-swap", _REF, "combine", "return a_j * a_i, a_j * b_i + b_j",
           "return a_j * a_i, a_i * b_i + b_j", "index-shift"),
    Mutant("ref-combine-add", _REF, "combine", "return a_j * a_i,", "return a_j + a_i,", "operator"),
    Mutant("ref-minus-b", _REF, "linear_scan", "a[i, t] * carried + b[i, t]", "a[i, t] * carried - b[i, t]",
           "operator"),
    Mutant("ref-drop-b", _REF, "linear_scan", "a[i, t] * carried + b[i, t]", "a[i, t] * carried", "drop-term"),
    Mutant("ref-add-decay", _REF, "linear_scan", "a[i, t] * carried + b[i, t]", "a[i, t] + carried + b[i, t]",
           "operator"),
    Mutant("ref-ignore-resets", _REF, "linear_scan",
           "np.zeros_like(state[i]) if cut is not None and cut[i, t] else state[i]", "state[i]", "branch"),
    Mutant("ref-drop-initial-state", _REF, "linear_scan", "state = np.asarray(initial_state).astype(acc)",
           "pass", "drop-term"),
    Mutant("ref-reverse-off-by-one", _REF, "linear_scan", "range(n_time - 1, -1, -1)", "range(n_time - 1, 0, -1)",
           "index-shift"),
    Mutant("ref-cut-first-step", _REF, "cut_mask", "cut[:, 1:] = resets[:, 1:]", "cut[:, :] = resets[:, :]",
           "index-shift"),
    Mutant("ref-cut-reverse-shift", _REF, "cut_mask", "cut[:, :-1] = resets[:, 1:]",
           "cut[:, :-1] = resets[:, :-1]", "index-shift"),
    Mutant("ref-log-times", _REF, "log_scan", "np.logaddexp(log_a[i, t] + state[i], log_b[i, t])",
           "np.logaddexp(log_a[i, t] * state[i], log_b[i, t])", "operator"),
    Mutant("ref-log-reset-carries", _REF, "log_scan", "state[i] = log_b[i, t]",
           "state[i] = np.logaddexp(state[i], log_b[i, t])", "branch"),
    Mutant("ref-vjp-prev-shift", _REF, "linear_scan_vjp", "a_bar[:, t] = g * prev", "a_bar[:, t] = g * h[:, t]",
           "index-shift"),
    Mutant("ref-vjp-conj", _REF, "linear_scan_vjp", "a_bar[:, t] = g * prev", "a_bar[:, t] = g * np.conj(prev)",
           "operator"),
    Mutant("ref-vjp-drop-decay", _REF, "linear_scan_vjp", "g_acc = a_full[:, t] * g", "g_acc = g", "drop-term"),
    Mutant("ref-vjp-minus-carry", _REF, "linear_scan_vjp", "np.asarray(cotangent_h[:, t], dtype) + g_acc",
           "np.asarray(cotangent_h[:, t], dtype) - g_acc", "operator"),
    Mutant("ref-vjp-keep-cut-abar", _REF, "linear_scan_vjp", "(1,) * (b.ndim - 2)), 0, a_bar)",
           "(1,) * (b.ndim - 2)), a_bar, a_bar)", "branch"),
    Mutant("ref-vjp-no-broadcast-sum", _REF, "_sum_to_shape", "s == 1 and sx != 1", "s == 1 and sx == 1",
           "operator"),
    # --- the NumPy backend's methods ----------------------------------------------------------------------
    Mutant("np-seq-shift-b", _NP, "_sequential", "_step(a[:, t], state, b[:, t],", "_step(a[:, t], state, b[:, t - 1],",
           "index-shift"),
    Mutant("np-prefix-shift-a", _NP, "_prefix", "_step(a[:, shift:], b[:, :-shift], b[:, shift:]",
           "_step(a[:, :-shift], b[:, :-shift], b[:, shift:]", "index-shift"),
    Mutant("np-prefix-stride", _NP, "_prefix", "shift *= 2", "shift *= 3", "constant"),
    Mutant("np-assoc-drop-decay", _NP, "_associative", "a[:, 0] * h0 + b[:, 0]", "h0 + b[:, 0]", "drop-term"),
    Mutant("np-chunk-carry-first", _NP, "_chunked", "state = h[:, sl][:, -1]", "state = h[:, sl][:, 0]",
           "index-shift"),
    Mutant("np-chunk-drop-decay", _NP, "_chunked", "_step(a_cum, state[:, None]", "_step(1, state[:, None]",
           "drop-term"),
    Mutant("np-heinsen-exclusive", _NP, "_heinsen", "a_star = np.cumsum(log_a, axis=1, dtype=wide).astype(log_a.dtype)",
           "a_star = np.cumsum(log_a, axis=1, dtype=wide).astype(log_a.dtype) - log_a", "index-shift"),
    Mutant("np-log-domain-zero", _NP, "_check_log_domain", "np.all(values > 0)",
           "np.all(values >= 0)", "operator"),
    Mutant("np-final-first", _NP, "linear_scan", "final = h[:, -1] if h.shape[1] else h0",
           "final = h[:, 0] if h.shape[1] else h0", "index-shift"),
    Mutant("np-no-unflip", _NP, "linear_scan", "h = h[:, ::-1]", "h = h", "drop-term"),
    Mutant("np-logscan-minus", _NP, "log_scan", "np.logaddexp(la[:, t] + state, lb[:, t])",
           "np.logaddexp(la[:, t] - state, lb[:, t])", "operator"),
    Mutant("np-logscan-cut-zero", _NP, "log_scan", "-np.inf, la)", "0.0, la)", "constant"),
    Mutant("np-vjp-shift-wrong-way", _NP, "linear_scan_vjp",
           "np.concatenate([a_p[:, 1:], np.ones_like(a_p[:, :1])], axis=1)",
           "np.concatenate([np.ones_like(a_p[:, :1]), a_p[:, :-1]], axis=1)", "index-shift"),
    Mutant("np-vjp-init-drop-decay", _NP, "linear_scan_vjp", "init_bar = a_p[:, 0] * g[:, 0]",
           "init_bar = g[:, 0]", "drop-term"),
    Mutant("np-vjp-cut-unflipped", _NP, "linear_scan_vjp", "_expand(cut[:, ::-1] if reverse else cut, a.ndim)",
           "_expand(cut, a.ndim)", "index-shift"),
    Mutant("np-vjp-broadcast-axes", _NP, "linear_scan_vjp", "for i in range(2, a.ndim)",
           "for i in range(3, a.ndim)", "index-shift"),
    # --- the C++ kernel (forward: through the NumPy backend's "native" method; backward: through torch) -------
    Mutant("cc-fwd-minus-b", _CC, "inline void fwd_step(", "carry[d] = mul(ld(a[d]), carry[d]) + ld(b[d]);",
           "carry[d] = mul(ld(a[d]), carry[d]) - ld(b[d]);", "operator"),
    Mutant("cc-fwd-bcast-drop-b", _CC, "inline void fwd_step(", "carry[d] = mul(ai, carry[d]) + ld(b[d]);",
           "carry[d] = mul(ai, carry[d]);", "drop-term"),
    Mutant("cc-fwd-ignore-reverse", _CC, "void scan_fwd(", "(reverse ? s.t - 1 - k : k)", "(k)", "branch"),
    Mutant("cc-fwd-ignore-cut", _CC, "void scan_fwd(", "if (cut && cut[row])", "if (false && cut)", "branch"),
    Mutant("cc-fwd-cut-drops-b", _CC, "void scan_fwd(", "for (int64_t d = 0; d < width; ++d) c[d] = ld(b_row[d]);",
           "for (int64_t d = 0; d < width; ++d) c[d] = S(0);", "drop-term"),
    Mutant("cc-fwd-stale-final", _CC, "void scan_fwd(", "std::copy(carry.begin(), carry.end(), fin + n * s.d + d0);",
           "std::copy(h0 + n * s.d + d0, h0 + n * s.d + d1, fin + n * s.d + d0);", "drop-term", NUMPY_SCAN),
    Mutant("cc-bwd-drop-final-ct", _CC, "void scan_bwd(", "g[d] = ld(ct[d]) + cf[d];", "g[d] = ld(ct[d]);", "drop-term",
           TORCH_SCAN),
    Mutant("cc-bwd-drop-decay", _CC, "void scan_bwd(", "g[d] = ld(ct[d]) + mul(cj<kConj>(ld(a_next[d])), g[d]);",
           "g[d] = ld(ct[d]) + g[d];", "drop-term", TORCH_SCAN),
    Mutant("cc-bwd-prev-shift", _CC, "void scan_bwd(", "h + row_of(k - 1) * s.d", "h + row_of(k) * s.d",
           "index-shift", TORCH_SCAN),
    Mutant("cc-bwd-unconjugated", _CC, "inline void abar_row(",
           "ab[d] = project<A>(mul(g[d], cj<kConj>(S(ld(prev[d])))));",
           "ab[d] = project<A>(mul(g[d], S(ld(prev[d]))));", "operator", TORCH_SCAN),
    Mutant("cc-bwd-h0bar-ignores-cut", _CC, "void scan_bwd(", "} else if (cut_next) {\n      std::fill(out,",
           "} else if (false) {\n      std::fill(out,", "branch", TORCH_SCAN),
    *PALLAS_MUTANTS,
)

_TK = "backends/torch/triton_scan_kernels.py"
_TG = "backends/torch/triton_gateloop_mh_kernels.py"

#: Mutants of the Triton kernels (``method="triton"``), run only where triton is installed (:func:`all_mutants`).
TRITON_MUTANTS: tuple[Mutant, ...] = (
    Mutant("triton-chunk-carry-off-by-one", _TK, "_last_row", "BLOCK_T - 1, tl.int32", "BLOCK_T - 2, tl.int32",
           "index-shift", TRITON_SCAN),
    Mutant("triton-fwd-drop-reset", _TK, "scan_fwd_kernel", "f = tl.broadcast_to(c[:, None], (BLOCK_T, BLOCK_N))",
           "f = tl.broadcast_to(0 * c[:, None], (BLOCK_T, BLOCK_N))", "branch", TRITON_SCAN),
    Mutant("triton-bwd-drop-reset", _TK, "scan_bwd_kernel",
           "f = tl.broadcast_to(c_next[:, None], (BLOCK_T, BLOCK_N))",
           "f = tl.broadcast_to(0 * c_next[:, None], (BLOCK_T, BLOCK_N))", "branch", TRITON_SCAN),
    Mutant("triton-bwd-prev-shift", _TK, "scan_bwd_kernel", "prv = (t + 1) if REVERSE else (t - 1)",
           "prv = t", "index-shift", TRITON_SCAN),
    Mutant("triton-scan-stride", _TK, "_block_scan", "step: tl.constexpr = 1 << k", "step: tl.constexpr = 2 << k",
           "constant", TRITON_SCAN),
    Mutant("triton-mingru-bwd-drop-abar", _TK, "scan_bwd_kernel", "s * a_t * (gr * c - gr * hr)", "s * a_t * gr * c",
           "drop-term", TRITON_MINGRU),
    Mutant("triton-glr-tied-bwd-drop-abar", "backends/torch/triton_gated_linear_rnn_kernels.py", "glr_bwd_kernel",
           "(g * cand - a_bar) * i * not_i", "g * cand * i * not_i", "drop-term", TRITON_GLR),
    # the chunked GateLoop kernel (intra-chunk scores, inter-chunk state): chunk c > 0 restarts from zero; the
    # chunk-end state decays each written k_s v_sᵀ by one gate too many (an off-by-one in the carried L = W[C-1]);
    # the read-out drops the inter-chunk term (P ⊙ q) · S₀; the backward kernel recomputes a chunk from the previous
    # chunk's checkpoint, hands the previous chunk an unconjugated decay conj(P_{C-1}) Ḡ of the state cotangent,
    # and pulls ā back through the running products without the factor a_t (real gates)
    Mutant("triton-gateloop-drop-chunk-carry", _TG, "gateloop_fwd_kernel",
           "tl.store(ck_ptr + c_off, s_r, mask=kv_ok)",
           "s_r = tl.where(c > 0, 0.0 * s_r, s_r)\n        tl.store(ck_ptr + c_off, s_r, mask=kv_ok)",
           "drop-term", TRITON_GATELOOP),
    Mutant("triton-gateloop-carry-off-by-one", _TG, "_decays", "ml = jj[:, None] < r", "ml = jj[:, None] <= r",
           "index-shift", TRITON_GATELOOP),
    Mutant("triton-gateloop-drop-inter-chunk", _TG, "gateloop_fwd_kernel",
           "o_r = _dot(_scores(q, k, w_r, HEAD_GATE), v) + _dot(pq_r, s_r)",
           "o_r = _dot(_scores(q, k, w_r, HEAD_GATE), v)", "drop-term", TRITON_GATELOOP),
    Mutant("triton-gateloop-bwd-stale-checkpoint", _TG, "gateloop_bwd_kernel",
           "c * sc_c + kk[:, None] * sc_k", "tl.maximum(c - 1, 0) * sc_c + kk[:, None] * sc_k", "index-shift",
           TRITON_GATELOOP),
    Mutant("triton-gateloop-bwd-unconjugated-decay", _TG, "gateloop_bwd_kernel",
           "n_r += _dot(pq_i, go_i) + e_i[:, None] * g_i", "n_r += _dot(pq_i, go_i) - e_i[:, None] * g_i",
           "operator", TRITON_GATELOOP),
    Mutant("triton-gateloop-bwd-abar-drop-decay", _TG, "gateloop_bwd_kernel", "cp_r = ar * pb_r", "cp_r = pb_r",
           "drop-term", TRITON_GATELOOP),
)


def all_mutants() -> tuple[Mutant, ...]:
    """:data:`MUTANTS`, plus :data:`TRITON_MUTANTS` where triton is installed (found without importing it)."""
    import importlib.util

    return MUTANTS + (TRITON_MUTANTS if importlib.util.find_spec("triton") is not None else ())


#: Mutants that may survive, each with the reason no conformance case can or should kill it.
EXPECTED_SURVIVORS: dict[str, str] = {
    "cc-bwd-h0bar-ignores-cut": (
        "equivalent under the contract: the branch zeroes initial_state_bar when the first processed step is cut, "
        "but no public call can cut it. reference.cut_mask never cuts t = 0 forward or t = T-1 in reverse (a reset "
        "there keeps the initial state, recurrence.md §4; named case reset-keeps-initial-state-in-first-segment), "
        "and every backend builds the kernel's cut array with cut_mask. The branch guards direct callers of "
        "linrec.backends.native.linear_scan_vjp only; a conformance case cannot reach it."),
}


# --- applying an edit ---------------------------------------------------------------------------------------


def _function_span(source: str, name: str, file: str) -> tuple[int, int]:
    """Character offsets of the top-level function ``name`` in ``source``."""
    tree = ast.parse(source)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(nodes) != 1:
        raise ValueError(f"{file}: no single top-level function {name!r}")
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts[nodes[0].lineno - 1], starts[nodes[0].end_lineno]


def apply(mutant: Mutant, source: str) -> str:
    """``source`` with the mutant's edit; ``ValueError`` when the edit does not match where it should.

    The checks keep the list honest as the sources change: an edit that matches nowhere (or twice) in its
    scope would silently test nothing.
    """
    if mutant.old == mutant.new:
        raise ValueError(f"mutant {mutant.name}: the edit changes nothing")
    if mutant.file.endswith(".py"):
        begin, end = _function_span(source, mutant.scope, mutant.file)
        count = source.count(mutant.old, begin, end)
        if count != 1:
            raise ValueError(f"mutant {mutant.name}: {mutant.old!r} occurs {count} times in {mutant.scope}() of "
                             f"{mutant.file}; it must occur once")
        at = source.index(mutant.old, begin, end)
    else:
        if source.count(mutant.scope) != 1:
            raise ValueError(f"mutant {mutant.name}: the anchor {mutant.scope!r} is not unique in {mutant.file}")
        at = source.find(mutant.old, source.index(mutant.scope))
        if at < 0:
            raise ValueError(f"mutant {mutant.name}: {mutant.old!r} does not follow {mutant.scope!r} in {mutant.file}")
    return source[:at] + mutant.new + source[at + len(mutant.old):]


# --- the worker (one fresh interpreter per mutant) ----------------------------------------------------------


def _worker(spec: dict) -> int:
    """Load the mutated file in place of the original, run the selected cases, print a JSON summary."""
    import importlib.abc
    import importlib.util

    if spec.get("module"):
        module, path = spec["module"], spec["path"]

        class _Override(importlib.abc.MetaPathFinder):
            def find_spec(self, fullname, _path=None, _target=None):
                return importlib.util.spec_from_file_location(module, path) if fullname == module else None

        sys.meta_path.insert(0, _Override())
    if spec.get("kernel"):
        from linrec.backends import native
        from linrec.backends.native import build

        build.SOURCE = Path(spec["kernel"])  # read by library_path() and build(); the cache key hashes it
        if not native.available():
            print(json.dumps({"invalid": f"the mutated kernel does not build: {native.build_error()}"}))
            return 0
    from linrec.conformance import runner

    failed, counts = [], {}
    for backend, select in spec["runs"]:
        report = runner.run_backend(backend, select=select)
        if report.import_error:
            print(json.dumps({"invalid": f"{backend} does not import: {report.import_error}"}))
            return 0
        if not report.results:
            print(json.dumps({"invalid": f"no {backend} case matches {select!r}"}))
            return 0
        for r in report.results:
            counts[r.status] = counts.get(r.status, 0) + 1
            if r.status in runner.BAD_STATUSES:
                failed.append(f"{backend}:{r.id} ({r.status}: {r.detail[:160]})")
    print(json.dumps({"failed": failed, "counts": counts}))
    return 0


def run_mutant(mutant: Mutant | None, *, runs: Sequence[tuple[str, str]] | None = None, timeout: float = 900,
               cache: Path | None = None) -> MutantResult:
    """Run the conformance ``runs`` (default: the mutant's) on ``mutant`` (``None``: the unmutated baseline)."""
    name = mutant.name if mutant else "baseline"
    runs = tuple(runs or (mutant.runs if mutant else NUMPY_SCAN))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="linrec-mutant-") as tmp:
        spec: dict = {"runs": runs}
        env = dict(os.environ)
        if mutant is not None:
            source = (ROOT / mutant.file).read_text()
            try:
                mutated = apply(mutant, source)
            except ValueError as err:
                return MutantResult(name, "invalid", 0.0, str(err))
            target = Path(tmp) / Path(mutant.file).name
            target.write_text(mutated)
            if mutant.file == KERNEL:
                spec["kernel"] = str(target)
                env["LINREC_CACHE"] = str(cache or Path(tmp) / "cache")  # never the user's cache
                # ... but its compiled objects: only the mutated source's objects are compiled
                native_build.copy_objects(Path(env["LINREC_CACHE"]))
            else:
                spec.update(module=MODULES[mutant.file], path=str(target))
        cmd = [sys.executable, "-m", "linrec.tools.mutants", "--worker", json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return MutantResult(name, "killed", time.perf_counter() - start, f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return MutantResult(name, "killed", seconds, f"crashed (exit {proc.returncode}): {tail[:200]}")
    out = json.loads(lines[-1])
    if "invalid" in out:
        return MutantResult(name, "invalid", seconds, out["invalid"])
    counts = ", ".join(f"{v} {k}" for k, v in sorted(out["counts"].items()))
    if out["failed"]:
        return MutantResult(name, "killed", seconds, f"{len(out['failed'])} cases failed ({counts})",
                            out["failed"])
    if mutant is None:
        return MutantResult(name, "passed", seconds, counts)
    return MutantResult(name, "survived", seconds, f"every case passed ({counts})")


# --- reporting ---------------------------------------------------------------------------------------------


def _markdown(results: list[MutantResult], mutants: dict[str, Mutant], seconds: float, command: str) -> str:
    scored = [r for r in results if r.status in ("killed", "survived")]
    killed = sum(r.status == "killed" for r in scored)
    lines = [
        "# Mutation check of the conformance suite",
        "",
        f"Generated by `{command}` ({seconds / 60:.1f} min on this machine). Each mutant is one edit to the",
        "reference loop, the NumPy backend's scan or the C++ kernel; the conformance cases named in *runs* are",
        "run on it in a fresh interpreter. Killed = some case failed. Kernel mutants are compiled into a",
        "temporary cache seeded with the unchanged sources' objects; the torch runs cover the kernel's backward",
        "pass. Run a subset with `--only NAME ...`, list the mutants with `--list`;",
        "`tests/test_conformance_mutants.py` runs three.",
        "",
        f"**Score: {killed}/{len(scored)} mutants killed** "
        f"({sum(r.status == 'invalid' for r in results)} invalid).",
        "",
        "| mutant | file | kind | edit | runs | result | first failing case |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = mutants.get(r.name)
        if m is None:
            continue
        edit = f"`{m.old}` → `{m.new}`".replace("\n", " ").replace("|", "\\|")
        runs = ", ".join(f"{b} `{s}`" for b, s in m.runs)
        first = r.failed[0].split(" (")[0] if r.failed else r.detail
        lines.append(f"| {r.name} | {m.file}:{m.scope.strip('( ')} | {m.kind} | {edit} | {runs} | {r.status} | "
                     f"{first.replace('|', '/')} |")
    survivors = [r for r in results if r.status == "survived"]
    lines += [
        "",
        "## Cases added for survivors",
        "",
        "`conformance/scan_mutant_cases.py` holds the cases written because a mutant got through everything else:",
        "",
        "- `scan/mutant/combine-fold-equals-scan[*]`: nothing compared the spec's `combine` (§6) with the scan, so",
        "  `ref-combine-swap` and `ref-combine-add` survived the first run.",
        "- `scan/mutant/gradient-leading-broadcast[*]`: the property strategies broadcast `a` over the last state",
        "  axis only, so `np-vjp-broadcast-axes` (the gradient of a `(B, T, 1)` decay of a `(B, T, 5)` state is",
        "  not summed back) survived the first run.",
        "",
        "## Survivors",
        "",
    ]
    if not survivors:
        lines.append("None.")
    for r in survivors:
        lines.append(f"- **{r.name}**: {EXPECTED_SURVIVORS.get(r.name, 'NO REASON RECORDED: add a case')}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linrec.tools.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--select", help="override every mutant's case selection (fnmatch on case ids)")
    parser.add_argument("--backend", help="with --select: the backend to run it on (default numpy)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant (default 900)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the results as Markdown")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(json.loads(args.worker))
    by_name = {m.name: m for m in all_mutants()}
    if args.list:
        for m in all_mutants():
            print(f"{m.name:28} {m.file}:{m.scope.strip('( ')} [{m.kind}] {m.old!r} -> {m.new!r}")
        return 0
    unknown = [n for n in args.only or () if n not in by_name]
    if unknown:
        parser.error(f"unknown mutants {unknown}; see --list")
    chosen = [by_name[n] for n in args.only] if args.only else list(all_mutants())
    runs = ((args.backend or "numpy", args.select),) if args.select else None
    start = time.perf_counter()
    base = run_mutant(None, runs=runs, timeout=args.timeout)
    print(f"baseline: {base.status} ({base.detail}, {base.seconds:.1f} s)", flush=True)
    if base.status != "passed":
        print("\n".join(base.failed[:20]))
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="linrec-mutant-cache-") as cache:
        for m in chosen:
            r = run_mutant(m, runs=runs, timeout=args.timeout, cache=Path(cache))
            results.append(r)
            first = f" first: {r.failed[0][:140]}" if r.failed else ""
            print(f"{m.name:28} {r.status:9} {r.seconds:6.1f} s  {r.detail}{first}", flush=True)
    total = time.perf_counter() - start
    scored = [r for r in results if r.status in ("killed", "survived")]
    killed = sum(r.status == "killed" for r in scored)
    print(f"score: {killed}/{len(scored)} killed, {sum(r.status == 'invalid' for r in results)} invalid, "
          f"{total:.0f} s")
    if args.markdown:
        command = "python -m linrec.tools.mutants " + " ".join(a for a in (argv or sys.argv[1:]) if a)
        Path(args.markdown).write_text(_markdown(results, by_name, total, command.strip()))
    unexplained = [r.name for r in results if r.status == "survived" and r.name not in EXPECTED_SURVIVORS]
    invalid = [r.name for r in results if r.status == "invalid"]
    if unexplained or invalid:
        print(f"unexplained survivors: {unexplained}; invalid: {invalid}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
