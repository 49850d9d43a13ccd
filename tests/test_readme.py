"""Every Python example in the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    exec(compile(code, str(README), "exec"), {})


TEXT = README.read_text()
PYPROJECT = README.parent / "pyproject.toml"


def test_machine_commands_unchanged_and_cpu_only_variant_documented():
    """This machine's commands stay as they are; a CPU-only user is told to take torch from PyTorch's CPU index."""
    assert ('pip install -c constraints.txt ".[all]" && linrec conformance' in TEXT)
    assert 'pip install -c constraints.txt -e ".[test]" && pytest' in TEXT
    cpu = re.search(r"pip install -c constraints.txt torch --index-url (\S+)", TEXT)
    assert cpu and cpu.group(1) == "https://download.pytorch.org/whl/cpu"


def test_declared_ranges_in_readme_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for framework in ("torch", "jax"):
        (declared,) = [r for r in extras[framework] if r.startswith(f"{framework}>=")]
        assert f"`{declared}`" in TEXT, declared


def test_time_claims_are_stated_and_not_the_old_ones():
    assert "a minute" not in TEXT
    assert "about 9 minutes" in TEXT  # linrec bench --quick, all four
    assert "100,000" in TEXT and "benchmarks/results/thorough.md" in TEXT
    assert (README.parent / "benchmarks" / "results" / "thorough.md").is_file()
