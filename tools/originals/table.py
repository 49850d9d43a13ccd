"""Import tables: rows that move an original's numbers onto canonical names, and their inverse (export)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linrec.tools.formats import CheckpointError


@dataclass(frozen=True)
class ORow:
    """One row of an import table: an original tensor (pattern) -> (part of) a canonical tensor.

    Steps, in order: ``stack``: the original stacks placeholder ``stack`` on axis 0 (unstack it);
    ``transpose``: a torch ``(out, in)`` weight; ``take=(i, n)``: use column block ``i`` of ``n``;
    ``order``: reorder the ``len(order)`` column blocks (canonical block ``k`` = original block ``order[k]``);
    ``place=(i, n)``: the result is column block ``i`` of ``n`` of the canonical tensor (the blocks are
    concatenated once all rows ran).
    """

    original: str
    canonical: str
    transpose: bool = False
    stack: str = ""
    take: tuple[int, int] | None = None
    order: tuple[int, ...] | None = None
    place: tuple[int, int] | None = None


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _regex(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for name in set(_PLACEHOLDER.findall(pattern)):
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>0|[1-9][0-9]*)", 1)
    return re.compile(regex + r"\Z")


def _blocks(a: np.ndarray, n: int, what: str) -> list[np.ndarray]:
    if a.ndim == 0 or a.shape[-1] % n:
        raise CheckpointError(f"{what}: shape {a.shape} does not split into {n} column blocks")
    return np.split(a, n, axis=-1)


def apply_table(table: Sequence[ORow], tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run an import table: ``(canonical params, original names no row matched)``."""
    compiled = [(_regex(row.original), row) for row in table]
    out: dict[str, np.ndarray] = {}
    parts: dict[str, dict[int, tuple[int, np.ndarray]]] = {}
    unknown = []
    for key, value in tensors.items():
        matches = [(m, row) for regex, row in compiled if (m := regex.match(key))]
        if not matches:
            unknown.append(key)
            continue
        for m, row in matches:
            groups = m.groupdict()
            value = np.asarray(value)
            items = {None: value}
            if row.stack:
                if value.ndim == 0:
                    raise CheckpointError(f"{key}: expected a leading axis of stacked layers, got a scalar")
                items = {i: value[i] for i in range(value.shape[0])}
            for index, item in items.items():
                names = groups if index is None else {**groups, row.stack: index}
                if row.transpose:
                    if item.ndim != 2:
                        raise CheckpointError(f"{key}: expected a 2-D weight, got shape {item.shape}")
                    item = np.ascontiguousarray(item.T)
                if row.take is not None:
                    item = _blocks(item, row.take[1], key)[row.take[0]]
                if row.order is not None:
                    blocks = _blocks(item, len(row.order), key)
                    item = np.concatenate([blocks[j] for j in row.order], axis=-1)
                name = row.canonical.format(**names)
                if row.place is None:
                    out[name] = np.ascontiguousarray(item)
                else:
                    parts.setdefault(name, {})[row.place[0]] = (row.place[1], item)
    for name, pieces in parts.items():
        n = {total for total, _ in pieces.values()}.pop()
        if sorted(pieces) != list(range(n)):
            missing = sorted(set(range(n)) - set(pieces))
            raise CheckpointError(f"{name}: column block(s) {missing} of {n} are missing in the original checkpoint")
        shapes = {p.shape[:-1] for _, p in pieces.values()}
        if len(shapes) > 1:
            raise CheckpointError(f"{name}: the original's blocks have inconsistent shapes "
                                  f"{[pieces[i][1].shape for i in range(n)]}")
        out[name] = np.concatenate([pieces[i][1] for i in range(n)], axis=-1)
    return out, unknown


def invert_table(table: Sequence[ORow], params: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run an import table backwards (export): ``(original tensors, canonical names no row matched)``.

    Every step only moves numbers, so ``apply_table(table, invert_table(table, p)[0])[0] == p`` bit for bit.
    Undone in reverse order: ``place`` (take the block back out), ``order`` (inverse permutation), ``take``
    (concatenate the blocks the rows took), ``transpose``, ``stack`` (stack the layers on axis 0).
    """
    compiled = [(_regex(row.canonical), row) for row in table]
    # original name -> stack index (None: not stacked) -> take block index (None: whole) -> (n, array)
    pieces: dict[str, dict[Any, dict[Any, tuple[int, np.ndarray]]]] = {}
    rows_of: dict[str, ORow] = {}
    unknown = []
    for key, value in params.items():
        matches = [(m, row) for regex, row in compiled if (m := regex.match(key))]
        if not matches:
            unknown.append(key)
            continue
        for m, row in matches:
            groups = m.groupdict()
            item = np.asarray(value)
            if row.place is not None:
                item = _blocks(item, row.place[1], key)[row.place[0]]
            if row.order is not None:
                blocks = _blocks(item, len(row.order), key)
                original_blocks = [None] * len(row.order)
                for k, j in enumerate(row.order):
                    original_blocks[j] = blocks[k]
                item = np.concatenate(original_blocks, axis=-1)
            index = int(groups[row.stack]) if row.stack else None
            name = row.original.format(**groups)
            rows_of[name] = row
            block = row.take[0] if row.take is not None else None
            n = row.take[1] if row.take is not None else 1
            pieces.setdefault(name, {}).setdefault(index, {})[block] = (n, item)
    out: dict[str, np.ndarray] = {}
    for name, by_index in pieces.items():
        row = rows_of[name]
        items = {}
        for index, blocks in by_index.items():
            if None in blocks:
                item = blocks[None][1]
            else:
                n = next(iter(blocks.values()))[0]
                if sorted(blocks) != list(range(n)):
                    raise CheckpointError(f"{name}: column block(s) {sorted(set(range(n)) - set(blocks))} of {n} "
                                          "have no canonical tensor")
                item = np.concatenate([blocks[i][1] for i in range(n)], axis=-1)
            if row.transpose:
                item = item.T
            items[index] = np.ascontiguousarray(item)
        if row.stack:
            if sorted(items) != list(range(len(items))):
                raise CheckpointError(f"{name}: layers {sorted(items)} are not 0..{len(items) - 1}")
            out[name] = np.stack([items[i] for i in range(len(items))])
        else:
            out[name] = items[None]
    return out, unknown
