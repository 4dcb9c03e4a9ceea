"""The types of the command line's option values, and the one rule for a value one refuses.

A value an option's type refuses (not a number, out of its range, not one of the choices, not a time, not a job
kind; empty included) is a usage error on the command line, exit 2 (``Invalid value for '--processes': 'abc' is
not a whole number from 1 to 256``); the same value from the option's environment variable (or a ``.env`` line) is
a setting to fix where the process is deployed, ``CONFIG_ERROR``, exit 3, naming the variable, the value and what
it accepts (``setting_error``); from Python it is ``INVALID_INPUT``. A value the orchestrator checks itself (an id,
JSON, a path, a text) is exit 3 with its own code however it is given.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import click
from click.core import ParameterSource

from orchestrator.clock import ISO_FORMS, from_iso
from orchestrator.errors import ConfigError
from orchestrator.limits import KIND_RULE, MAX_DURATION_SECONDS, is_kind
from orchestrator.security import shown

BOOLEAN_WORDS = "1 or 0 (true/false, yes/no, on/off)"


def _bounds(low: float | None, high: float | None, low_open: bool = False) -> str:
    """``from 1 to 256``, ``of 1 or more``, ``more than 0, up to 31622400``."""
    def number(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    if low is not None and high is not None:
        return f"more than {number(low)}, up to {number(high)}" if low_open else f"from {number(low)} to {number(high)}"
    if low is not None:
        return f"more than {number(low)}" if low_open else f"of {number(low)} or more"
    return f"up to {number(high)}" if high is not None else ""


class WholeRange(click.IntRange):
    """``IntRange`` whose refusal says what it takes: "'abc' is not a whole number from 1 to 256", not click's "is not
    a valid integer range"."""

    what = "a whole number"

    @property
    def accepts(self) -> str:
        return f"{self.what} {_bounds(self.min, self.max)}".strip()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{shown(value)} is not {self.accepts}", param, ctx)


class OutputBound(WholeRange):
    """``--output-max-bytes``: 0 (no bound) or at least ``minimum`` bytes."""

    def __init__(self, minimum: int) -> None:
        super().__init__(min=0)
        self.minimum = minimum

    @property
    def accepts(self) -> str:
        return f"0 (no bound) or a whole number of bytes of {self.minimum} ({self.minimum >> 20} MiB) or more"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if 0 < number < self.minimum:
            self.fail(f"{shown(value)} is not {self.accepts}", param, ctx)
        return number


class FiniteFloatRange(click.FloatRange):
    """``FloatRange`` that refuses NaN too (NaN passes every comparison of the range, and a NaN duration never
    expires, or overflows a timestamp; a NaN threshold never alerts), and says what it takes when it refuses."""

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 unit: str = "") -> None:
        super().__init__(min=min, max=max, min_open=min_open)
        self.unit = unit

    @property
    def accepts(self) -> str:
        number = f"a number of {self.unit}" if self.unit else "a number"
        return f"{number} {_bounds(self.min, self.max, self.min_open)}".strip()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter:
            number = math.nan
        if math.isnan(number):
            self.fail(f"{shown(value)} is not {self.accepts}", param, ctx)
        return number


def seconds(min: float = 0.0, *, min_open: bool = False, max: float = MAX_DURATION_SECONDS) -> FiniteFloatRange:
    """The type of a duration option: ``min`` to ``max``, by default ``limits.MAX_DURATION_SECONDS`` (a year)."""
    return FiniteFloatRange(min=min, max=max, min_open=min_open, unit="seconds")


class IsoTime(click.ParamType):
    """An ISO-8601 time (``audit-timeline --since``), kept as given: the command passes the text on
    (``Orchestrator.timeline``, which refuses one that is none from Python with ``INVALID_INPUT``)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            from_iso(value)
        except (ValueError, OverflowError, TypeError, AttributeError):
            self.fail(f"{shown(value)} is not an ISO-8601 time ({ISO_FORMS})", param, ctx)
        return value


def job_kinds(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Every ``--kind`` (``submit``, ``worker``, ``status --all``; one value or several) is a job kind, checked here
    (from ``ORCH_WORKER_KINDS`` by the worker command; from Python by ``submit_job`` and ``WorkerSettings``)."""
    for kind in (value,) if isinstance(value, str) else value or ():
        if not is_kind(kind):
            raise click.BadParameter(f"a job kind is {KIND_RULE}, not {shown(kind)}")
    return value


def accepted(kind: click.ParamType) -> str | None:
    """What an option's type takes, in words, or None when only its refusal says it (a path)."""
    if isinstance(kind, (WholeRange, FiniteFloatRange)):
        return kind.accepts
    if isinstance(kind, click.Choice):
        return f"one of {', '.join(map(str, kind.choices))}"
    if isinstance(kind, click.types.BoolParamType):
        return BOOLEAN_WORDS
    return None


def setting_error(exc: click.ClickException) -> ConfigError | None:
    """A value an option refused that came from its environment variable (set there or by a ``.env`` line): the
    ``CONFIG_ERROR`` naming the variable, its value and what it accepts; None for a value typed on the command line
    (a usage error) or any other error."""
    if not isinstance(exc, click.BadParameter) or exc.ctx is None or exc.param is None or not exc.param.name:
        return None
    if exc.ctx.get_parameter_source(exc.param.name) is not ParameterSource.ENVIRONMENT:
        return None
    param = exc.param
    variable = param.envvar if isinstance(param.envvar, str) else next(iter(param.envvar or ()), "?")
    value = os.environ.get(variable, "")
    where = f"set in the environment or .env, for {max(param.opts, key=len)}"
    accepts = accepted(param.type)
    if accepts is None:
        return ConfigError(f"{variable}={shown(value)} ({where}) is refused: {exc.message}")
    return ConfigError(f"{variable} must be {accepts}, not {shown(value)} ({where})")


def typed_value_error(exc: click.ClickException) -> None:
    """A value typed on the command line that its option refused is named by the option alone: click's message also
    names an option's variable when its help shows it (``'--processes' (env var: 'ORCH_VERIFY_PROCESSES')``), as if
    the value had come from there. One from the variable is ``setting_error``'s; a missing option keeps the name."""
    if (not isinstance(exc, click.BadParameter) or isinstance(exc, click.MissingParameter) or exc.param_hint is not None
            or not isinstance(exc.param, click.Option) or exc.ctx is None or not exc.param.name):
        return
    if exc.ctx.get_parameter_source(exc.param.name) is not ParameterSource.ENVIRONMENT:
        exc.param_hint = click.Parameter.get_error_hint(exc.param, exc.ctx)


STORE_HELP = "Where events live: 'file' (BASE_PATH/<PROJECT_ID>/.orchestrator) or a postgresql:// URL.  [default: file]"


def store_option(help: str = STORE_HELP) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--store`` (``ORCH_STORE_URL``): every command on a project's, and ``db``'s with its own help (no default)."""
    return click.option("--store", "store_url", envvar="ORCH_STORE_URL", show_envvar=True, default=None, help=help)
