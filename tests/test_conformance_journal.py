"""A resumable conformance run (``--resume JOURNAL``): finished cases are kept, skipped on the next sitting, and a
journal from a different run is refused."""

from __future__ import annotations

import json

import pytest

from linrec.conformance import journal as journal_module
from linrec.conformance import run, runner, to_text
from linrec.conformance.journal import JournalError
from linrec.tools import cli

SELECT = "scan/property/equals-reference*"


def _budget(per_case: int) -> int:
    """A thorough budget that gives ``per_case`` examples to each of the NumPy backend's property cases (the budget is
    spread over all of them, whatever ``select`` picks)."""
    import linrec

    cases = runner.collect(linrec.get_backend("numpy"), runner.CASE_MODULES)
    return per_case * sum("hypothesis" in c.tags for c in cases)


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", _budget(20))


def _count_runs(monkeypatch) -> list[str]:
    ran: list[str] = []
    real = runner._run_case

    def counting(backend, case, xfails):
        ran.append(case.id)
        return real(backend, case, xfails)

    monkeypatch.setattr(runner, "_run_case", counting)
    return ran


def test_an_interrupted_thorough_run_resumes_where_it_stopped(tmp_path, small_budget, monkeypatch):
    path = tmp_path / "jax.journal"
    (whole,) = run(["numpy"], select=SELECT, thorough=True, resume=path)
    lines = path.read_text().splitlines()
    assert whole.ok and len(lines) == len(whole.results) >= 3
    assert sum(json.loads(line)["examples"] for line in lines) == whole.hypothesis["examples"] >= 60

    # the run died during its third case's write: two whole lines and a cut one remain
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    ran = _count_runs(monkeypatch)
    (again,) = run(["numpy"], select=SELECT, thorough=True, resume=path)
    finished = [json.loads(line)["result"]["id"] for line in lines[:2]]
    assert ran == [r.id for r in whole.results if r.id not in finished]  # the finished cases did not run again
    assert [(r.id, r.status) for r in again.results] == [(r.id, r.status) for r in whole.results]
    assert again.hypothesis["examples"] == whole.hypothesis["examples"]
    assert again.hypothesis["resumed"] == {"cases": 2, "examples": sum(json.loads(x)["examples"] for x in lines[:2])}
    assert f"numpy: 2 of {len(whole.results)} cases and" in to_text([again])
    # the cut line was replaced by the rerun case's entry: the journal is whole again
    assert [json.loads(line)["result"]["id"] for line in path.read_text().splitlines()][2:] == ran

    ran.clear()
    (third,) = run(["numpy"], select=SELECT, thorough=True, resume=path)
    assert ran == [] and third.hypothesis["resumed"]["cases"] == len(whole.results)


def test_a_journal_of_a_different_run_is_refused(tmp_path, small_budget, monkeypatch):
    path = tmp_path / "numpy.journal"
    run(["numpy"], select=SELECT, thorough=True, resume=path)
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", _budget(40))  # another budget: another record
    with pytest.raises(JournalError, match=r"different run \(examples_per_case changed\)"):
        run(["numpy"], select=SELECT, thorough=True, resume=path)
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", _budget(20))
    monkeypatch.setattr(journal_module, "source_digest", lambda backend=None: "edited")  # the code changed
    with pytest.raises(JournalError, match=r"\(sources changed\)"):
        run(["numpy"], select=SELECT, thorough=True, resume=path)


def test_a_damaged_journal_is_refused_not_half_read(tmp_path):
    path = tmp_path / "j"
    path.write_text('{"backend": "numpy"}\n{"backend": "numpy", "fingerprint": {}, "result": {}, "examples": 1}\n')
    with pytest.raises(JournalError, match="line 1: not a linrec conformance journal"):
        run(["numpy"], select="scan/named/decay-half*", resume=path)


def test_the_source_digest_follows_a_user_backend_file(tmp_path, monkeypatch):
    module = tmp_path / "mine_digest.py"
    module.write_text("METHODS = ('sequential',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mine_digest

    before = journal_module.source_digest(mine_digest)
    assert before == journal_module.source_digest(mine_digest) != journal_module.source_digest(None)
    module.write_text("METHODS = ('sequential', 'chunked')\n")
    assert journal_module.source_digest(mine_digest) != before


def test_the_command_resumes_and_says_so(tmp_path, capsys):
    path = tmp_path / "run.journal"
    argv = ["conformance", "--backend", "numpy", "--select", "scan/named/decay-half*", "--quiet", "--resume",
            str(path)]
    assert cli.main(argv) == 0
    cases = len(path.read_text().splitlines())
    assert cases >= 1
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert f"numpy: {cases} of {cases} cases and" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--resume journals the case suite"):
        cli.main(["conformance", "--backend", "numpy", "--devices", "2", "--resume", str(path)])
