"""Adapters that hold other projects' scan kernels to the spec (issue 16, item 6).

Each module exposes a peer's scan-shaped op under the spec's names (``linear_scan``, ``linear_scan_vjp``,
``METHODS``, ``asarray``, ``to_numpy``, ``dtype_name``) so the conformance suite runs on it::

    linrec conformance --backend linrec.conformance.adapters.accelerated_scan --select 'scan/*'

An adapter converts layouts only ((B, T, *S) <-> the peer's layout, a broadcast decay materialised, an
exact widening of the accumulator's dtype). It never emulates an option the peer lacks: it raises
:class:`Unsupported`, declares the option in ``LACKS[method]`` (the property cases then draw only what the
method offers) and lists the cases in its xfail manifest ``XFAILS`` (``adapters/xfails/<name>.json``), which
the runner honours. ``benchmarks/peers.py`` runs them and writes ``benchmarks/results/peers.md``.

Importing this package loads no framework; importing an adapter loads its peer (and raises ``ImportError``
naming ``pip install 'linrec[peers]'`` when the peer is missing).
"""

from linrec.conformance.adapters._common import Unsupported, load_xfails

#: adapter module names, importable as ``linrec.conformance.adapters.<name>``
ADAPTERS: tuple[str, ...] = ("accelerated_scan", "recurrentgemma", "fla")

__all__ = ["ADAPTERS", "Unsupported", "load_xfails"]
