"""The Python API's argument checks on every store, as the README's "Python API" section and its limits table state
them: a value no line can hold, or that a call could not write, is an ``OrchestratorError`` with a stable code (never a
bare ``TypeError`` or ``ValueError``), raised before anything is written or reserved. Found by a hunt, 2026-12-07."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import jobstates as js
import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, orchestrator_on
from orchestrator import Orchestrator, OrchestratorError, handler
from orchestrator.errors import ConfigError, InvalidInputError
from orchestrator.clock import to_iso
from orchestrator.heartbeat import Heartbeat
from orchestrator.leases import HeldLease, lease_expiry, read_lease
from orchestrator.limits import LATEST_TIME
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM, HEADS_AREA
from orchestrator.worker import Worker, WorkerSettings

LEASE, RETRY_MAX = 30.0, 60.0


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def worker(orch: Orchestrator, name: str = "w1") -> Worker:
    return Worker(orch, WorkerSettings(worker_id=name, lease_seconds=LEASE, retry_base_seconds=RETRY_MAX,
                                       retry_max_seconds=RETRY_MAX))


def written(orch: Orchestrator, job_id: str) -> tuple[list[bytes], int]:
    """The job's lines and the audit log's length: what a refused call must leave as it was."""
    return [line.raw for line in orch.store.read(job_id)], len(orch.store.read(AUDIT_STREAM))


# -- 1. a now near the last second an event can hold, and one that is no time ---------------------------------------
BAD_NOWS = [float("nan"), float("inf"), -float("inf"), -1, LATEST_TIME + 1, True, "1"]


@pytest.mark.parametrize("call", ["run_once", "claim"])
def test_a_now_within_a_lease_of_the_year_9999_claims_the_job_with_its_lease_ending_at_the_last_second(
        orch: Orchestrator, call: str) -> None:
    """``run_once(now=253402300799)`` raised ``ValueError: year 10000 is out of range`` writing the lease's end, after
    the claim had reserved the job (on PostgreSQL its ready row stayed reserved until the year 10000); then, until
    2026-12-07 (fix-small4), it was ``INVALID_INPUT`` for want of room, except for a ``now`` equal to the time the
    worker last read from its clock, which was not checked at all. A lease's end is put at the last second instead,
    whatever the ``now``, as a retry's is: any time is taken, as by every other call."""
    jobs = [orch.submit("t.echo", i) for i in range(2)]
    w = worker(orch)
    for job, now in zip(jobs, (LATEST_TIME, LATEST_TIME - LEASE + 1)):
        done = getattr(w, call)(now)
        assert done.job_id == job
        claimed = [e["data"] for e in map(json.loads, written(orch, job)[0]) if e["type"] == "job_claimed"]
        assert [c["lease_expires_at"] for c in claimed] == [to_iso(LATEST_TIME)] == ["9999-12-31T23:59:59.000000Z"]
        assert orch.status(job).state == ("succeeded" if call == "run_once" else "running")


def test_a_recovery_at_the_last_second_puts_the_retry_there(orch: Orchestrator) -> None:
    """``recover_stale(253402300799)`` raised ``ValueError`` writing the retry time of the first job it recovered, then
    was refused for want of room (until 2026-12-07, fix-small4): the retry is put at the last second."""
    job = js.running(orch, lease="2000-01-01T00:00:00.000000Z")
    assert worker(orch).recover_stale(LATEST_TIME) == [job]
    assert orch.status(job).state == "queued" and orch.load(job).state.retry_at == LATEST_TIME


@pytest.mark.parametrize("call", ["run_once", "claim", "recover_stale"])
@pytest.mark.parametrize("now", BAD_NOWS, ids=repr)
def test_a_now_that_is_no_time_is_invalid_input_and_nothing_is_written(
        orch: Orchestrator, call: str, now: Any) -> None:
    queued, stale = orch.submit("t.echo", 1), js.running(orch, lease="2000-01-01T00:00:00.000000Z")
    before = written(orch, queued), written(orch, stale)
    w = worker(orch)
    with pytest.raises(InvalidInputError, match="now must be None or a time"):
        getattr(w, call)(now)
    assert (written(orch, queued), written(orch, stale)) == before
    assert [orch.status(j).state for j in (queued, stale)] == ["queued", "running"]


def test_a_now_equal_to_the_time_the_last_pass_read_is_checked_as_any_other(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until 2026-12-07 (fix-small4) a ``now`` equal to the time the worker's last pass read from its clock was not
    checked at all: after a clock that gave a time past 9999-12-31T23:59:59Z, ``claim`` of that time went on to
    reserve and claim. Every ``now`` is checked now, by no state of the worker."""
    orch.submit("t.echo", 1)
    w, bad = worker(orch), LATEST_TIME + 1
    monkeypatch.setattr(orch, "clock", lambda: bad)
    with pytest.raises(InvalidInputError):
        w.run_once()
    monkeypatch.undo()
    reached: list[float] = []
    monkeypatch.setattr(w.claimer, "claim", reached.append)
    with pytest.raises(InvalidInputError, match="now must be None or a time"):
        w.claim(bad)
    assert reached == []


def test_a_claim_and_a_heartbeat_with_the_clock_within_a_lease_of_the_year_9999_end_the_lease_at_its_last_second(
        orch: Orchestrator) -> None:
    """The clock's own time (a ``now`` given is refused, above; the clock's is not checked) half a lease before
    9999-12-31T23:59:59Z: the claim raised ``ValueError: year 10000 is out of range`` writing the lease's end (on
    PostgreSQL after reserving the job's ready row), and so did a heartbeat writing its lease record. The lease now
    ends at the latest time an event can hold, as a stale recovery's retry does, and reads back as written."""
    job = orch.submit("t.echo", 1)
    late = LATEST_TIME - LEASE / 2
    orch.clock = lambda: late
    claim = worker(orch).claim()
    assert claim is not None and claim.job_id == job
    assert orch.status(job).lease_expires_at == to_iso(LATEST_TIME) == "9999-12-31T23:59:59.000000Z"
    beat = Heartbeat(orch, worker_id="w1", lease_seconds=LEASE, held=HeldLease(LEASE, LATEST_TIME))
    assert beat.renew(claim) == "renewed" and beat.held.expires_at == LATEST_TIME
    lease = read_lease(orch.store, job, claim.epoch)
    assert lease is not None and (lease.expires_at, lease.renewed_at) == (LATEST_TIME, late)
    assert lease_expiry(orch.store, orch.load(job).state, late) == LATEST_TIME


@pytest.mark.parametrize("call", ["run_once", "run"])
def test_a_worker_whose_clock_is_within_a_lease_of_the_year_9999_runs_its_jobs(orch: Orchestrator, call: str) -> None:
    """A pass reads the clock and gives its time to ``recover_stale`` and ``claim``, which refused it as a ``now``
    given without room for a lease (``INVALID_INPUT`` at every pass, no job run): neither the clock's time nor a given
    one needs room now (above)."""
    jobs = [orch.submit("t.echo", i) for i in range(2)]
    late = LATEST_TIME - LEASE / 2
    orch.clock = lambda: late
    w = worker(orch)
    done = [w.run_once(), w.run_once()] if call == "run_once" else w.run(idle_exit=True)
    assert done == 2 or [r.outcome for r in done] == ["succeeded"] * 2
    assert [orch.status(job).state for job in jobs] == ["succeeded"] * 2


# -- 2. and 3. what orch.append is given ---------------------------------------------------------------------------
CANCEL = [("job_cancelled", {"reason": "stop"})]


class Disagreeing(list):
    """A list whose items by index are not what iterating it yields."""

    def __init__(self, indexed: tuple, iterated: tuple) -> None:
        super().__init__(indexed)
        self.iterated = iterated

    def __iter__(self):
        return iter(self.iterated)


# a text that answers the checks and the redaction by its own methods: a name, ASCII, nothing to redact
Lying = type("Lying", (str,), {"isidentifier": lambda _: True, "isascii": lambda _: True, "lower": lambda _: "x",
                               "translate": lambda *_: "x"})

REFUSED_APPENDS: dict[str, dict[str, Any]] = {
    # aux: (area, key) -> bytes or None (files wrote the event, then raised TypeError or ValueError)
    "aux text": {"aux": {("leases", "k1"): "text"}},
    "aux 1-tuple key": {"aux": {("leases",): b"x"}},
    "aux int value": {"aux": {("leases", "k"): 5}},  # PostgreSQL stored it
    "aux key not a tuple": {"aux": {"x": b"1"}},
    "aux area escaping": {"aux": {("../../evil", "k"): b"1"}},
    "aux key escaping": {"aux": {("leases", "../../evil"): b"1"}},
    "aux over a head record": {"aux": {(HEADS_AREA, "k"): b"x"}},
    "aux record too long": {"aux": {("leases", "k"): b"x" * 600}},
    "aux not a mapping": {"aux": [("leases", "k")]},
    # actor, run_id: written as given
    "actor an int": {"actor": 5},
    "actor a dict": {"actor": {"a": 1}},
    "actor blank": {"actor": " "},
    "actor too long": {"actor": "a" * 201},
    "run_id an int": {"run_id": 5},
    "run_id a list": {"run_id": [1]},
    "run_id with a newline": {"run_id": "r\nx"},
    "run_id empty": {"run_id": ""},  # and the three below: what append's own test of an id must refuse too
    "run_id with ..": {"run_id": "r..x"},
    "run_id too long": {"run_id": "r" * 129},
    "run_id a str subclass with a newline": {"run_id": type("Text", (str,), {})("r\nx")},
    # audit: (action, note)
    "audit text": {"audit": "cancel"},  # action "c", note "a"
    "audit ints": {"audit": (1, 2)},
    "audit 1-tuple": {"audit": ("cancel",)},  # IndexError
    "audit 3-tuple": {"audit": ("cancel", "n", "x")},
    "audit action no name": {"audit": ("password=hunter2", "n")},
    "audit note a lone surrogate": {"audit": ("cancel", "\udcff")},
    "audit a list iterating to a note not text": {"audit": Disagreeing(("cancel", "stop"), ("cancel", 5))},
    # a str subclass: the checks and the redaction asked its own methods, and it was written as its text is
    "audit action a str subclass saying it is a name": {"audit": (Lying("password=hunter2"), "n")},
    "audit note a str subclass saying it holds no secret": {"audit": ("cancel", Lying("password=hunter2"))},
    "audit note a str subclass saying it is ASCII": {"audit": ("cancel", Lying("\udcff"))},  # UnicodeEncodeError
    "audit a plain str subclass": {"audit": ("cancel", type("Text", (str,), {})("stop"))},
    # new: (type, data) pairs
    "new one type": {"new": "job_cancelled"},  # ValueError unpack
    "new a triple": {"new": [("job_cancelled", {}, 1)]},
    "new a dict": {"new": {"job_cancelled": {}}},
    "new empty": {"new": []},
    "new bytes in a field": {"new": [("job_cancelled", {"reason": b"x"})]},  # stored as "x"
    "new a number as text": {"new": [("job_claimed", {"worker_id": "w", "epoch": "2", "attempt": True,
                                                      "lease_expires_at": "2026-12-07T00:00:00Z"})]},  # stored as 2, 1
    # fence, view
    "fence text": {"fence": "x"},
    "fence negative": {"fence": -1},
    "fence True": {"fence": True},
    "view text": {"view": "view"},  # AttributeError
}


@pytest.mark.parametrize("case", REFUSED_APPENDS)
def test_append_refuses_an_argument_no_line_can_hold_naming_it_before_anything_is_written(
        orch: Orchestrator, case: str) -> None:
    job = orch.submit("t.echo", 1, audit=True)
    before = written(orch, job)
    args = {"view": orch.load(job), "new": CANCEL, "audit": ("cancel", "stop"), **REFUSED_APPENDS[case]}
    with pytest.raises(OrchestratorError) as err:
        orch.append(args.pop("view"), job, args.pop("new"), **args)
    assert err.value.code in ("INVALID_INPUT", "INVALID_ID") and err.value.exit_code == 3, err.value
    assert written(orch, job) == before and orch.status(job).state == "queued"


@pytest.mark.parametrize("data", [{"kind": "a\x00b"}, {"kind": "t.echo", "options": {"key": b"k1"}}],
                         ids=["a NUL in the kind", "bytes as the key"])
def test_a_submission_appended_as_it_is_is_held_to_the_rules_of_a_submit(orch: Orchestrator, data: dict) -> None:
    """``append`` of a ``job_submitted`` took a NUL kind (files; PostgreSQL: ``STORAGE_ERROR``) and a key of bytes
    (stored as its text): the event's model holds every field to its own type and the kind to ``limits.is_kind``."""
    submitted = {"input": None, "options": {}, "context_digest": "0" * 64, **data}
    with pytest.raises(InvalidInputError):
        orch.append(None, "01J0000000000000000000000A", [("job_submitted", submitted)])
    assert list(orch.job_ids()) == []


def test_an_audit_pair_is_unpacked_once_and_its_entry_holds_what_was_checked(orch: Orchestrator) -> None:
    """A list whose indexing and iteration disagree: its items were typed by index, unpacked by iterating for the
    other checks, and the entry made by index, so a note that is not valid Unicode (here by index) passed the checks
    into the entry until the fix."""
    job = orch.submit("t.echo", 1, audit=True)
    orch.append(orch.load(job), job, CANCEL, audit=Disagreeing(("password=hunter2", "\udcff"), ("cancel", "stop")))
    entry = json.loads(orch.store.read(AUDIT_STREAM)[-1].raw)
    assert (entry["job_id"], entry["data"]["action"], entry["data"]["note"]) == (job, "cancel", "stop")


def test_a_control_action_given_its_texts_as_a_str_subclass_writes_its_entry_as_with_a_str(orch: Orchestrator) -> None:
    """The control actions write their texts made anew (canonical and redacted), so the audit pair they give
    ``append`` holds exact ``str`` whatever the caller passed: refusing a subclass there refuses no action."""
    text = type("Text", (str,), {})
    job = orch.submit("t.echo", 1, audit=True)
    assert orch.cancel(job, text("stop password=hunter2")).applied and orch.status(job).state == "cancelled"
    entry = json.loads(orch.store.read(AUDIT_STREAM)[-1].raw)
    assert (entry["data"]["action"], entry["data"]["note"]) == ("cancel", "stop password=[REDACTED]")


def test_an_actor_given_to_append_is_stored_sanitized_in_the_event_its_entry_and_the_timeline(
        orch: Orchestrator) -> None:
    """``append(actor="password=hunter2")`` landed unredacted in the signed event and its audit entry."""
    job = orch.submit("t.echo", 1)
    orch.append(orch.load(job), job, CANCEL, actor=" ops password=hunter2 ", audit=("cancel", "stop"))
    event = json.loads(orch.store.read(job)[-1].raw)
    entry = json.loads(orch.store.read(AUDIT_STREAM)[-1].raw)
    assert event["actor"] == entry["actor"] == "ops password=[REDACTED]"
    assert {line["actor"] for line in orch.timeline(job)["lines"][1:]} == {"ops password=[REDACTED]"}


def test_each_actor_given_to_append_is_checked_and_stored_as_its_own_whatever_came_before(orch: Orchestrator) -> None:
    """``append_checks.stored_actor`` keeps the stored form of the actors given before (a worker's is the same on every
    append): an actor other than the one a form was kept for, or one not valid, is never given it."""
    equal_to_all = type("Text", (str,), {"__eq__": lambda *_: True, "__hash__": str.__hash__})
    actors = ["password=hunter2", "password=hunter2", "worker:w1", "password=hunter2", equal_to_all("ops")]
    jobs = [orch.submit("t.echo", i) for i in range(len(actors))]
    for job, actor in zip(jobs, actors):
        orch.append(orch.load(job), job, CANCEL, actor=actor)
    assert [json.loads(orch.store.read(j)[-1].raw)["actor"] for j in jobs] == [
        "password=[REDACTED]", "password=[REDACTED]", "worker:w1", "password=[REDACTED]", "ops"]
    job = orch.submit("t.echo", 5)
    for refused in (" ", "a" * 201, equal_to_all(" ")):
        with pytest.raises(InvalidInputError, match="actor must be"):
            orch.append(orch.load(job), job, CANCEL, actor=refused)
    assert orch.status(job).state == "queued"


# a text whose own methods say something else than it holds: a secret that says it holds none (``Lying``), or no text
Saying = type("Saying", (str,), {"strip": lambda _: Lying("password=hunter2"), "__str__": lambda _: "password=hunter2",
                                 "__len__": lambda _: 1})
NoText = type("NoText", (str,), {"strip": lambda _: 5, "__str__": lambda _: "x"})


def test_an_actor_given_as_a_str_subclass_is_stored_as_the_exact_text_it_holds_sanitized(
        orch: Orchestrator, base: Path, keyring: Keyring) -> None:
    """``limits.an_actor`` stripped an actor by its own ``strip``: a subclass's gave the stored actor, whatever it was:
    here ``password=hunter2`` unredacted (signed into the event and its entry), or ``"5"``. Until 2026-12-07
    (fix-small4); the text it holds is taken now, by ``str``'s own methods, as an exact ``str``."""
    job = orch.submit("t.echo", 1, audit=True)
    orch.append(orch.load(job), job, CANCEL, actor=Saying(" ops token=abc123 "), audit=("cancel", "stop"))
    event = json.loads(orch.store.read(job)[-1].raw)
    entry = json.loads(orch.store.read(AUDIT_STREAM)[-1].raw)
    assert event["actor"] == entry["actor"] == "ops token=[REDACTED]"
    made = Orchestrator(base_path=base, project_id="p2", keyring=keyring, actor=NoText(" ops "))
    assert type(made.actor) is str and made.actor == "ops"
    for refused in (Saying(" "), Saying("a" * 201)):  # its strip and len say a name of 1 character
        with pytest.raises(InvalidInputError, match="actor must be"):
            orch.append(orch.load(job), job, CANCEL, actor=refused)


# -- 4. a kind holding a control character ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["a\x00b", "a\nb", "\x1b[31mred", "a\u2028b"])
def test_a_kind_holding_a_control_character_is_invalid_input_on_every_store(orch: Orchestrator, kind: str) -> None:
    """Files stored ``"a\\x00b"``; PostgreSQL refused it as ``STORAGE_ERROR`` (exit 10), its text holding no NUL."""
    for call in (lambda: orch.submit(kind, 1), lambda: orch.jobs(kinds=[kind]), lambda: orch.worker(kinds=[kind])):
        with pytest.raises(InvalidInputError, match="no control character"):
            call()
    with pytest.raises(ConfigError, match="no control character"):
        handler(kind)(lambda ctx: {"status": "done"})
    assert list(orch.job_ids()) == []


# -- 5. Worker.backoff -----------------------------------------------------------------------------------------------
def test_backoff_of_any_failure_count_is_at_most_its_cap_and_a_count_that_is_no_number_is_invalid_input(
        orch: Orchestrator) -> None:
    """``backoff(10**100)`` computed 2**(10**100 - 1) (21 GB before it was killed); past 1024 failures a float could not
    hold the power (``OverflowError``), and ``backoff("x")`` was a ``TypeError``."""
    w = worker(orch)
    for failures in (1025, 10**6, 10**100):
        assert RETRY_MAX / 2 <= w.backoff(failures) < RETRY_MAX
    for failures in ("x", 1.5, None, -1):
        with pytest.raises(InvalidInputError, match="failures must be a whole number"):
            w.backoff(failures)


# -- 6. timeline() names its Python arguments ----------------------------------------------------------------------
def test_timeline_without_a_job_or_a_run_names_the_python_arguments_not_the_commands_options(
        orch: Orchestrator) -> None:
    """It said "give --job-id or --run-id": options of the command, not arguments of the method."""
    with pytest.raises(InvalidInputError) as err:
        orch.timeline()
    assert "job_id" in err.value.message and "run_id" in err.value.message and "--" not in err.value.message
    job = orch.submit("t.echo", 1)
    for bad in ({"action": "bogus"}, {"since": "yesterday"}):
        with pytest.raises(InvalidInputError) as err:
            orch.timeline(job, **bad)
        assert err.value.message.startswith(f"{next(iter(bad))} ") and "--" not in err.value.message
