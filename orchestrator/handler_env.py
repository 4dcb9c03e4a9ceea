"""The environment handler code gets: the worker's, minus the orchestrator's own settings and secrets.

Every ``ORCH_*`` variable (the signing key ``ORCH_SIGNING_KEY``, its file, the keyring folder, the worker's
settings) and the API keys in ``SECRET_ENV`` stay with the worker. A ``command`` is started with such an
environment (``handlers.command.child_env``); a Python handler's process (``HandlerHost`` or the per-run child,
a fork of the worker) removes them from its own environment before any handler runs
(``strip_private_environment``), so ``os.environ`` and the processes a handler starts do not hold them.

A worker whose store reads credentials from the environment (PostgreSQL: libpq's ``PGPASSWORD``, ``PGPASSFILE``,
..., ``EventStore.credential_env``) withholds those too (``withhold``), for the rest of its process, unless it was
told to pass them (``WorkerSettings.pass_store_credentials``): they may be the store's own.

The ``llm`` handler runs in that process too and needs two of them (``LLM_API_KEY``, ``ORCH_LLM_TIMEOUT``):
they are kept aside for it (``llm_environment``). This filters an environment; it is no sandbox: a Python
handler is a fork of the worker running as the same user (docs/worker.md, "What a handler can see").
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

SECRET_ENV = frozenset({"LLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"})
LLM_SETTINGS = ("LLM_API_KEY", "ORCH_LLM_TIMEOUT")  # filtered, yet read by the llm handler
_kept_for_llm: dict[str, str] = {}
_withheld: set[str] = set()  # a store's credential variables (``withhold``), for the rest of the process


def withhold(names: Iterable[str]) -> None:
    """Keep ``names`` from every handler this process starts from now on (a worker on PostgreSQL: its store's
    ``credential_env``). For the process, not one worker: the environment, and what it holds, is the process's."""
    _withheld.update(names)


def private(name: str) -> bool:
    """Whether a variable is the orchestrator's own, never a handler's: ``ORCH_*``, ``SECRET_ENV`` and what a worker
    withheld (its store's credentials)."""
    return name.startswith("ORCH_") or name in SECRET_ENV or name in _withheld


def handler_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the orchestrator's variables."""
    return {name: value for name, value in environ.items() if not private(name)}


def strip_private_environment() -> None:
    """In a freshly forked Python handler process, before any handler runs: remove the orchestrator's variables
    from ``os.environ`` (and so from what a handler starts), keeping the llm handler's settings aside."""
    for name in [name for name in os.environ if private(name)]:
        value = os.environ.pop(name)
        if name in LLM_SETTINGS:
            _kept_for_llm[name] = value


def llm_environment() -> dict[str, str]:
    """Where the llm handler reads its settings: the environment, and its own settings that a handler process
    removed from it (the worker's values, as they were when the process was forked)."""
    return {**os.environ, **_kept_for_llm}
