"""What a Python handler's process sends back for a run: the handler called, its result as payload bytes.

Whatever the function does (returns a value that is not JSON, raises, forks a copy of itself that returns too),
exactly one terminal payload leaves the handler process for the run, as bytes the worker will accept
(``orchestrator/payload.py`` is the worker's side). Used by the reused handler process
(``orchestrator/handler_host.py``) and the per-run child (``runner.fork_call``).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable

from orchestrator.errors import MalformedPayloadError
from orchestrator.json_text import not_json_reason
from orchestrator.payload import MAX_PAYLOAD_BYTES, NOT_UNICODE, too_large
from orchestrator.security import sanitized_cut


def handler_payload(fn: Callable[[], Any]) -> bytes:
    """Call a Python handler and return its terminal payload as bytes, whatever it does.

    An exception becomes a ``failed`` payload with ``error_code`` ``HANDLER_ERROR`` (traceback on
    stderr, so in the output tail, where it can be printed: ``_print_traceback``); a return value that is not JSON (a set, an object, text that is
    not valid Unicode) a ``failed`` payload with ``error_code`` ``MALFORMED_PAYLOAD`` saying why. A
    ``BaseException`` (``sys.exit``) is not caught: the process running the handler exits without a
    payload (``NO_TERMINAL_SIGNAL_EXIT``).
    """
    me = os.getpid()
    try:
        result = fn()
        leave_if_forked(me, 0)
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        try:
            data = json.dumps(result, ensure_ascii=False, allow_nan=False).encode()
        except UnicodeEncodeError:
            return _malformed(NOT_UNICODE)
        except (TypeError, ValueError) as exc:
            return _malformed(f"the handler returned a value that is not JSON: {not_json_reason(exc)}")
        except RecursionError:
            return _malformed("the handler returned a value nested too deeply to be JSON")
        # refused here, as the worker would: a payload it will not read is not sent (the worker would have to
        # kill this process, which is mid-write of a frame it cannot take back, ``HostRun.wait``)
        return data if len(data) <= MAX_PAYLOAD_BYTES else _malformed(too_large(len(data)).message)
    except Exception as exc:  # the handler's failure is the job's outcome, not the worker's
        leave_if_forked(me, 1)
        _print_traceback()
        text = f"handler raised {type(exc).__name__}{_text_of(exc)}"
        # bytes that are not UTF-8 in the message (a file name) are lone surrogates, which no event can hold: shown
        # escaped (``\udce9``), so the message is kept instead of the payload being refused as malformed
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        summary = sanitized_cut(text, 2000)  # sanitized, then cut
        return json.dumps({"status": "failed", "summary": summary, "error_code": "HANDLER_ERROR",
                           "retryable": True}).encode()


def _print_traceback() -> None:
    """The traceback of the exception being handled, on stderr, if it can be printed there: a handler that closed
    ``sys.stderr`` or descriptor 2, or a full disk under the output file, made the print raise out of the ``except``
    that makes the payload, and the run ended as ``NO_TERMINAL_SIGNAL_EXIT``, its exception lost (until
    2026-12-07). Its payload, which leaves on a pipe or in the terminal file, says it all the same."""
    try:
        traceback.print_exc()
    except Exception:  # noqa: S110 - the payload matters, the traceback is a courtesy
        pass


def _text_of(exc: Exception) -> str:
    """``": <the exception's text>"``, or a note that it cannot be read: an ``__str__`` that raises (or returns no
    text) raised out of this ``except``, and the handler process died with the run (``NO_TERMINAL_SIGNAL_EXIT``, a
    reused one replaced) until 2026-12-06."""
    try:
        return f": {exc}"
    except Exception:
        return " (its text cannot be read: its __str__ raised)"


def leave_if_forked(pid: int, code: int) -> None:
    """End this process at once (``os._exit(code)``, its output flushed) unless it is ``pid``, the handler process:
    a copy a handler forked without ``exec`` (``os.fork()``) that returned, raised or called ``sys.exit`` into the
    code after the handler must not answer for the run. Its payload, written first, was taken as the run's, and the
    handler's own, still in the pipe, as the next run's: another job's result; its exit code, announced first,
    ended a per-run child's run while the handler still ran. The handler process ends the copy's leftovers."""
    if os.getpid() == pid:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _malformed(why: str) -> bytes:
    """The payload of a handler whose return value is no terminal payload: recorded as ``MALFORMED_PAYLOAD``
    with the reason (bytes the worker could not parse would only say "not valid JSON")."""
    return json.dumps({"status": "failed", "summary": why, "error_code": MalformedPayloadError.code,
                       "retryable": True}).encode()
