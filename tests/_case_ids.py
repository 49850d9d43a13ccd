"""The one check a layer's test file keeps on its conformance cases: their ids.

The cases themselves run in ``tests/test_conformance.py`` (every case module, every bundled backend, the
xfail manifests); the report and the manifests name cases by id, so each layer checks its ids are sound.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import linrec


def assert_case_ids_named(cases_module: ModuleType, layer: str, *, at_least: int = 1,
                          properties: Iterable[str] = ()) -> list[str]:
    """Assert the module's cases have unique ids ``<layer>/<property>/...``, at least ``at_least`` of them,
    covering ``properties``; returns the ids for any further check of the caller's."""
    ids = [case.id for case in cases_module.cases(linrec.get_backend("numpy"))]
    assert len(ids) == len(set(ids)) >= at_least, f"{len(ids)} ids, {len(set(ids))} unique, {at_least} expected"
    assert all(i.startswith(f"{layer}/") for i in ids), [i for i in ids if not i.startswith(f"{layer}/")]
    missing = set(properties) - {i.split("/")[1] for i in ids}
    assert not missing, f"no {layer} case checks {sorted(missing)}"
    return ids
