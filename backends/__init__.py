"""Backends: twin modules with the same file and function names (``numpy``, ``jax``, ``torch``).

Nothing here imports a framework; ``linrec.get_backend(name)`` imports one on demand.
"""

#: The oldest framework versions the backends work with (pyproject's extras declare the same; a test checks).
#: jax 0.8.0 is the first with the public ``jax.enable_x64`` scope that linrec's float64 rule names (§5 of the spec;
#: ``jax.ffi``, which the native kernel's binding uses, came in 0.5.0). ``constraints-oldest.txt`` pins these minimums
#: and ``.ci/run`` tests them.
MINIMUM_VERSIONS = {"jax": "0.8.0"}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; ``"2.13.0+cpu"`` -> ``(2, 13, 0)`` (numeric release components only)."""
    parts = []
    for part in version.split("+", 1)[0].split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits or digits != part[: len(digits)]:
            break
        parts.append(int(digits))
        if digits != part:
            break
    return tuple(parts)


def require_version(framework: str, installed: str) -> None:
    """Raise ``ImportError`` naming the minimum when ``installed`` is older than ``MINIMUM_VERSIONS[framework]``."""
    minimum = MINIMUM_VERSIONS[framework]
    if version_tuple(installed) < version_tuple(minimum):
        raise ImportError(f"linrec's {framework} backend needs {framework}>={minimum}, found {framework} {installed}: "
                          f"pip install '{framework}>={minimum}'")
