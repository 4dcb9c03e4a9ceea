"""Whether the Python running the package has its runtime dependencies (standard library only: imported first).

The README's Quick start installs them into ``.venv`` without activating it, so the system's ``python3`` that runs
``scripts/<name>.py``, ``python3 -m orchestrator`` or ``test_imports.py`` next has none of them. Importing the
package there raises ``DependenciesMissing`` (an ``ImportError`` a program can catch, naming every one missing
and what to do); left uncaught, as in every script, it is printed as one line, ``error[DEPENDENCIES_MISSING]:
...``, exit 1, not a traceback (``sys.excepthook``, set only then; any other exception is printed as before).
"""
from __future__ import annotations

import importlib.util
import sys
from types import TracebackType

# import name -> the distribution pyproject.toml's dependencies name (tests/unit/test_requirements_file.py)
RUNTIME_DEPENDENCIES = {"pydantic": "pydantic", "click": "click", "cryptography": "cryptography", "nacl": "pynacl",
                        "dotenv": "python-dotenv"}
CODE = "DEPENDENCIES_MISSING"
HOW = ("install them as the README's Quick start says (python3 -m venv .venv && .venv/bin/pip install -e .) and run "
       "the command with .venv/bin/python, or with python3 after '. .venv/bin/activate'")


class DependenciesMissing(ImportError):
    """The Python running the package lacks runtime dependencies (``missing``: their distributions' names)."""

    code = CODE

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"this Python ({sys.executable}) does not have the orchestrator's dependencies "
                         f"({', '.join(missing)} missing): {HOW}")
        self.missing = missing


def missing() -> list[str]:
    """The runtime dependencies this Python cannot import, by their distributions' names."""
    return [dist for name, dist in RUNTIME_DEPENDENCIES.items() if importlib.util.find_spec(name) is None]


def require() -> None:
    """Raise ``DependenciesMissing`` when this Python cannot import a runtime dependency: the package's first step,
    since it imports its modules only as their names are used (``orchestrator/__init__.py``; ~0.5 ms)."""
    names = missing()
    if names:
        _print_uncaught_as_one_line()
        raise DependenciesMissing(names)


def _print_uncaught_as_one_line() -> None:
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, DependenciesMissing):
            print(f"error[{CODE}]: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    if not getattr(previous, "_dependencies_missing", False):
        hook._dependencies_missing = True  # type: ignore[attr-defined]
        sys.excepthook = hook
