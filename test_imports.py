"""Release check 1 of the shared ops runbook: ``python3 test_imports.py``.

Imports every module of the package and every runtime dependency, so a broken install (a missing
dependency, a module that fails at import) shows before a release, not at a worker's first job.
Prints ``imports ok: N modules`` and exits 0, or lists what failed and exits 1; run by a Python without the runtime
dependencies, one line ``error[DEPENDENCIES_MISSING]: ...`` naming them and what to do, exit 1. Also a pytest test
(``python3 -m pytest test_imports.py``).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys

OPTIONAL = {"orchestrator.store.pg_queue", "orchestrator.store.postgres", "orchestrator.store.pg_schema"}  # psycopg


def failed_imports() -> tuple[int, list[str]]:
    """How many modules imported, and a line for each that did not."""
    package = importlib.util.find_spec("orchestrator")  # found without running it: it may be what fails
    if package is None:
        return 0, ["orchestrator: not installed (install as in the README's Quick start)"]
    try:  # first the package, which imports orchestrator.installed before anything else
        importlib.import_module("orchestrator")
    except ImportError as exc:
        if getattr(exc, "missing", None):  # DependenciesMissing: a Python without the runtime dependencies (the
            raise  # system's, the Quick start's .venv not activated): one line naming them and what to do, exit 1
    except Exception:  # noqa: BLE001, S110 - listed with the modules below
        pass
    names = [*sys.modules["orchestrator.installed"].RUNTIME_DEPENDENCIES, "orchestrator"]
    names += [m.name for m in pkgutil.walk_packages(package.submodule_search_locations, "orchestrator.")
              if not m.name.endswith(".__main__")]  # that one runs the CLI
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if name in OPTIONAL and getattr(exc, "name", "") == "psycopg":
                continue  # the PostgreSQL extra is not installed: not needed on the file backend
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a module that raises at import is what this check is for
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    return len(names) - len(failures), failures


def test_every_module_and_dependency_imports() -> None:
    _, failures = failed_imports()
    assert not failures, failures


if __name__ == "__main__":
    done, failures = failed_imports()
    for line in failures:
        print(f"import failed: {line}", file=sys.stderr)
    print(f"imports ok: {done} modules" if not failures else f"{len(failures)} import(s) failed")
    sys.exit(1 if failures else 0)
