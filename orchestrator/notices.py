"""The lines a worker promises an operator on stderr (docs/worker.md): each stale job it recovered, each kind it has
no handler for, each key it does not trust.

Logged alone, they were printed by logging's last resort, so a handler module (``--import``) that sets logging up
could reformat them (``logging.basicConfig()`` at import) or hide them (a ``NullHandler`` on the root logger, a
higher level). The worker command prints them itself: it gives the ``Worker`` a ``notify`` that writes each line
to stderr, and the record is then logged at INFO, for a log set up to collect it (the last resort prints WARNING
and above only, so a line never shows twice). Without ``notify`` (the Python API) the record is a WARNING, as
before.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

Notify = Callable[[str], None]


def tell(notify: Notify | None, log: logging.Logger, message: str, **extra: Any) -> None:
    """Give ``message`` to ``notify`` and log it at INFO; without ``notify``, or when it fails (stderr gone: what
    was done stays done, the line is not worth stopping for), log it as a WARNING."""
    if notify is not None:
        try:
            notify(message)
        except Exception:  # noqa: BLE001 - any failure to print falls back to the log
            pass
        else:
            log.info(message, extra=extra)
            return
    log.warning(message, extra=extra)


def log_warning(log: logging.Logger, warning: dict[str, str], **extra: Any) -> None:
    """Log a warning that is also reported to the caller: one shape wherever it comes from, ``CODE: message``, with
    its ``code`` (and ``extra``: the job, the run...) in the record, so a log can be searched by code as the
    ``--json`` output is."""
    log.warning("%s: %s", warning["code"], warning["message"], extra={**extra, "code": warning["code"]})
