"""A resumable conformance run: each finished case appended to a journal file, skipped when the run is repeated.

Why: a ``--thorough`` run of the JAX backend compiles a new XLA program for almost every Hypothesis example and
takes hours (``benchmarks/results/thorough.md``). With ``linrec conformance --thorough --resume FILE`` each case's
result and example count are written to ``FILE`` as it finishes; running the same command again reruns only the
cases not in the file and reports the finished ones with their recorded results, so the record can be built over
several sittings and survives a run that dies.

A journal holds one JSON object per line: the backend, the run's *fingerprint*, the case's result and the examples it
ran. The fingerprint is what must not change between the sittings of one record: linrec's and the frameworks'
versions, a digest of the spec, backends and conformance sources (and of a user backend's module file), the
Hypothesis profile with its examples per case, and the xfail manifest. A journal written under another fingerprint
is refused with the fields that differ, never mixed into the report.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Journal", "JournalError", "fingerprint", "source_digest"]

#: packages whose sources define what a run checks (the spec pages are normative, the xfail manifests are JSON)
_SOURCE_PACKAGES = ("linrec.spec", "linrec.backends", "linrec.conformance")
_SOURCE_SUFFIXES = (".py", ".c", ".cc", ".cpp", ".h", ".json", ".md")


class JournalError(ValueError):
    """A journal that cannot be resumed: unreadable, or written by a different run."""


def _hash_tree(digest: Any, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")


def source_digest(backend: ModuleType | None = None) -> str:
    """SHA-256 (first 16 hex digits) of linrec's spec, backends and conformance sources, and of ``backend``'s own
    file when it lives outside them (a user's backend)."""
    digest = hashlib.sha256()
    roots = [Path(str(resources.files(package))) for package in _SOURCE_PACKAGES]
    for root in roots:
        _hash_tree(digest, root)
    own = getattr(backend, "__file__", None)
    if own and not any(Path(own).resolve().is_relative_to(root.resolve()) for root in roots):
        digest.update(Path(own).read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(backend: ModuleType, hypothesis: dict, xfails: dict[str, str]) -> dict[str, Any]:
    """What a resumed run must share with the sittings before it (see the module docstring)."""
    from linrec.conformance.runner import environment

    env = environment()
    return {"linrec": env["linrec"], "spec": env["spec"], "python": env["python"], "versions": env["versions"],
            "sources": source_digest(backend), "profile": hypothesis.get("profile"),
            "examples_per_case": hypothesis.get("examples_per_case"), "shrink": hypothesis.get("shrink"),
            "xfails": dict(sorted(xfails.items()))}


class Journal:
    """The journal file at ``path`` (created on the first finished case)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _lines(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from None
        entries, lines = [], text.splitlines()
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or not {"backend", "fingerprint", "result", "examples"} <= set(entry):
                    raise ValueError("not a journal entry")
            except ValueError as err:
                if number == len(lines) and not text.endswith("\n"):
                    # the last write was cut short (the process died inside it): drop it, so the next entry starts
                    # on a line of its own, and run that case again
                    os.truncate(self.path, len(text[: text.rfind("\n") + 1].encode()))
                    break
                raise JournalError(f"{self.path}, line {number}: not a linrec conformance journal ({err})") from None
            entries.append(entry)
        return entries

    def finished(self, backend: str, expected: dict[str, Any]) -> dict[str, dict]:
        """The finished cases of ``backend`` by id (``{"result": ..., "examples": n}``); raises
        :class:`JournalError` when the journal holds this backend's cases under another fingerprint."""
        done: dict[str, dict] = {}
        for entry in self._lines():
            if entry["backend"] != backend:
                continue
            if entry["fingerprint"] != expected:
                differ = sorted(k for k in set(expected) | set(entry["fingerprint"])
                                if expected.get(k) != entry["fingerprint"].get(k))
                raise JournalError(
                    f"the journal {self.path} holds results of backend {backend!r} from a different run "
                    f"({', '.join(differ)} changed): remove it, or name another file to start a new record")
            done[entry["result"]["id"]] = entry
        return done

    def record(self, backend: str, expected: dict[str, Any], result: Any, examples: int) -> None:
        """Append one finished case as a single write, flushed to disk before the next case starts."""
        line = json.dumps({"backend": backend, "fingerprint": expected, "result": asdict(result),
                           "examples": examples}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
