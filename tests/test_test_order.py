"""The test order ``tests/conftest.py`` gives xdist: the longest tests first, one per worker in turn."""

from __future__ import annotations

from types import SimpleNamespace

import conftest


def _items(names):
    return [SimpleNamespace(nodeid=name) for name in names]


def test_longest_tests_head_each_workers_chunk():
    long = [f"tests/test_x.py::t{fragment}" for fragment in conftest.LONGEST[:5]]
    short = [f"tests/test_y.py::short{i}" for i in range(7)]
    items = _items(short[:3] + long[::-1] + short[3:])
    conftest._spread_longest(SimpleNamespace(workerinput={"workercount": 2}), items)
    order = [item.nodeid for item in items]
    assert sorted(order) == sorted(short + long)  # nothing lost or repeated
    # worksteal's chunks for 2 workers: the first 6 of 12, then the rest; each starts with its share of the longest
    assert order[:3] == [long[0], long[2], long[4]] and order[6:8] == [long[1], long[3]]
    assert order[3:6] == short[:3] and order[8:] == short[3:]


def test_without_workers_the_longest_run_first():
    items = _items(["a", f"x{conftest.LONGEST[1]}", "b", f"x{conftest.LONGEST[0]}"])
    conftest._spread_longest(SimpleNamespace(), items)
    assert [item.nodeid for item in items] == [f"x{conftest.LONGEST[0]}", f"x{conftest.LONGEST[1]}", "a", "b"]
