"""The pilot registry with real pilots (the local backend): submissions recorded before they
happen, found again by name after a submitter died, raced by two servers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.backends import Backend, PilotSpec, SubmissionUncertain, pilot_spec
from galaxy_hpc_runner.backends.local import LocalBackend
from galaxy_hpc_runner.dropbox import pilots as pm
from galaxy_hpc_runner.dropbox.submitter import Submitter
from hpc_worker import protocol as p
from hpc_worker.records import PilotEntry
from hpc_worker.states import PilotState
from tests.sitekit import Site, run_together

SLOW_PILOT = {"idle_timeout": "30", "poll": "0.2"}  # stays up while the test looks


def _sites(tmp_path: Path, **pilot: str) -> tuple[Site, Site]:
    shared = tmp_path / "shared-workspace"
    shared.mkdir()
    made = []
    for server in ("alpha", "beta"):
        root = tmp_path / server
        root.mkdir()
        made.append(Site(root, hpc_env={"workspace": str(shared), "server": server},
                         pilot=dict(SLOW_PILOT, **pilot)))
    return made[0], made[1]


def _kill_all(sub: Submitter) -> None:
    for entry in sub.pilots.registry.entries().values():
        if entry.scheduler_id and entry.state is not PilotState.GONE:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(entry.scheduler_id), signal.SIGKILL)


def _active(sub: Submitter) -> list[PilotEntry]:
    return [e for e in sub.pilots.registry.entries().values() if e.state is not PilotState.GONE]


def _alive_named(pilot_id: str) -> str | None:
    return LocalBackend.find_by_name(None, pilot_id)  # type: ignore[arg-type]


@pytest.fixture
def two(tmp_path: Path) -> Any:
    a, b = _sites(tmp_path)
    subs = (a.submitter(), b.submitter())
    for sub in subs:
        sub.stager.ensure_layout()
    yield subs
    _kill_all(subs[0])
    a.close()
    b.close()


def test_intent_is_in_the_registry_and_the_spool_before_the_scheduler_is_asked(
        two: tuple[Submitter, Submitter]) -> None:
    sub = two[0]
    seen: list[tuple[PilotEntry | None, list[Any]]] = []
    real = sub.backend.submit

    def watching(spec: PilotSpec) -> str:
        seen.append((sub.pilots.registry.read(spec.pilot_id),
                     [r for r in sub.spool.pilots() if r.pilot_id == spec.pilot_id]))
        return real(spec)

    sub.backend.submit = watching  # type: ignore[method-assign]
    rec = sub.pilots.submit()
    entry, spooled = seen[0]
    assert entry is not None and entry.state is PilotState.SUBMITTING
    assert entry.submitter == "alpha" and not entry.scheduler_id
    assert [r.state for r in spooled] == [PilotState.SUBMITTING]
    after = sub.pilots.registry.read(rec.pilot_id)
    assert after is not None and after.state is PilotState.PENDING
    assert after.scheduler_id == rec.scheduler_id


def test_a_pilot_queued_by_a_submitter_killed_before_it_recorded_it_is_found_by_name(
        two: tuple[Submitter, Submitter]) -> None:
    """The scheduler took the pilot; the submitter died before writing its id down."""
    alpha, beta = two
    pilot_id = pm.new_pilot_id("alpha")
    alpha.pilots.registry.write(PilotEntry(pilot_id=pilot_id, submitted=p.now_iso(),
                                           submitter="alpha", backend="local"))
    alpha.pilots.preflight()
    LocalBackend(alpha.cfg).submit(pilot_spec(alpha.cfg, pilot_id))  # the answer is lost
    for sub in (Submitter(alpha.cfg), beta):  # the restarted submitter, and the other server
        known = {rec.pilot_id: status for rec, status in sub.pilots.refresh()}
        assert known[pilot_id].state is PilotState.RUNNING
    entry = alpha.pilots.registry.read(pilot_id)
    assert entry is not None and entry.scheduler_id == _alive_named(pilot_id)
    assert [r.scheduler_id for r in alpha.spool.pilots()] == [entry.scheduler_id]


def test_an_intent_that_never_reached_the_scheduler_counts_until_it_cannot_any_more(
        two: tuple[Submitter, Submitter]) -> None:
    alpha, beta = two
    young = PilotEntry(pilot_id=pm.new_pilot_id("alpha"), submitted=p.now_iso(),
                       submitter="alpha")
    alpha.pilots.registry.write(young)
    states = {r.pilot_id: s for r, s in beta.pilots.refresh()}
    assert states[young.pilot_id].state is PilotState.PENDING  # its sbatch may still run
    old = time.time() - pm.submit_settle(alpha.cfg) - 5
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(old))
    alpha.pilots.registry.write(PilotEntry(pilot_id=young.pilot_id, submitted=stamp,
                                           submitter="alpha"))
    states = {r.pilot_id: s for r, s in beta.pilots.refresh()}
    assert states[young.pilot_id].state is PilotState.GONE
    assert states[young.pilot_id].reason == pm.NEVER_REACHED
    entry = alpha.pilots.registry.read(young.pilot_id)
    assert entry is not None and entry.state is PilotState.GONE
    assert young.pilot_id not in {r.pilot_id for r, _ in beta.pilots.refresh()}  # once


class AnswerLost(LocalBackend):
    """The pilot starts, but its id never comes back (a connection dropped after sbatch)."""

    def submit(self, spec: PilotSpec) -> str:
        super().submit(spec)
        raise SubmissionUncertain(spec.pilot_id, "sbatch exited -1")


def test_an_uncertain_submission_is_looked_up_by_name_not_repeated(
        two: tuple[Submitter, Submitter]) -> None:
    alpha = two[0]
    alpha.pilots.backend = AnswerLost(alpha.cfg)
    rec = alpha.pilots.submit()
    assert rec.state is PilotState.PENDING and rec.scheduler_id == _alive_named(rec.pilot_id)
    assert [e.pilot_id for e in _active(alpha)] == [rec.pilot_id]


def test_two_servers_racing_submit_one_pilot_in_50_tries(
        two: tuple[Submitter, Submitter]) -> None:
    alpha = two[0]
    for sub in two:
        sub.pilots.preflight()
    for attempt in range(50):
        for sub in two:
            sub.pilots.refresh()  # both decide on an empty registry
        got = race_submit(two)
        active = _active(alpha)
        assert len(active) == 1, "try %d: %s" % (attempt, active)
        assert got["alpha"] == got["beta"] == active[0].pilot_id
        assert sum(sub.pilots.declined for sub in two) == attempt + 1
        _kill_all(alpha)
        for entry in active:  # gone, as the next refresh would find
            entry.state = PilotState.GONE
            alpha.pilots.registry.write(entry)


def race_submit(subs: tuple[Submitter, Submitter]) -> dict[str, str]:
    """Both submit at the same instant; the pilot id each got back, by server."""
    barrier = threading.Barrier(len(subs))
    got: dict[str, str] = {}

    def submit(sub: Submitter) -> None:
        barrier.wait()
        got[sub.pilots.server] = sub.pilots.submit().pilot_id

    run_together(submit, [(sub,) for sub in subs])
    return got


def test_liveness_from_the_registry_and_heartbeats(tmp_path: Path) -> None:
    alpha, beta = _sites(tmp_path, heartbeat="60")  # one beat at start, then quiet
    try:
        sub, other = alpha.submitter(), beta.submitter()
        rec = sub.pilots.submit()
        hb = Path(p.pilot_path(sub.cfg.workspace, rec.pilot_id, p.HEARTBEAT))
        deadline = time.monotonic() + 20
        while not hb.exists():
            assert time.monotonic() < deadline, "no first heartbeat"
            time.sleep(0.05)
        other.pilots.refresh()
        assert other.pilots.live_pilot_ids() == {rec.pilot_id}  # another server's pilot
        assert not other.pilots.stale_or_gone(rec.pilot_id)
        beat = json.loads(hb.read_text())
        hb.write_text(json.dumps(dict(beat, epoch=beat["epoch"] - 1000)))
        other.pilots.refresh()
        assert other.pilots.stale_or_gone(rec.pilot_id)  # silent far beyond stale_after
        assert other.pilots.live_pilot_ids() == set()
        assert other.pilots.stale_or_gone("pilot-nobody-knows")
    finally:
        _kill_all(alpha.submitter())
        alpha.close()
        beta.close()


class NoLookup(LocalBackend):
    """A scheduler that cannot list jobs by name (DRMAA 1.0)."""

    find_by_name = Backend.find_by_name


def test_without_lookup_by_name_an_old_silent_intent_does_not_block_forever(
        two: tuple[Submitter, Submitter]) -> None:
    alpha, beta = two
    beta.pilots.backend = NoLookup(beta.cfg)
    entry = PilotEntry(pilot_id=pm.new_pilot_id("alpha"), submitted=p.now_iso(),
                       submitter="alpha")
    alpha.pilots.registry.write(entry)
    states = {r.pilot_id: s for r, s in beta.pilots.refresh()}
    assert states[entry.pilot_id].state is PilotState.UNKNOWN  # nothing submitted meanwhile
    old = time.time() - pm.submit_settle(alpha.cfg) - 5
    entry.submitted = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(old))
    alpha.pilots.registry.write(entry)
    states = {r.pilot_id: s for r, s in beta.pilots.refresh()}
    assert states[entry.pilot_id].state is PilotState.GONE


def test_old_pilots_are_pruned_from_registry_spool_and_workspace(
        two: tuple[Submitter, Submitter]) -> None:
    alpha, beta = two
    rec = alpha.pilots.submit()
    _kill_all(alpha)
    deadline = time.monotonic() + 20
    while alpha.pilots.registry.read(rec.pilot_id).state is not PilotState.GONE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "pilot not seen gone"
        alpha.pilots.refresh()
        time.sleep(0.05)
    assert beta.pilots.prune(keep_days=1) == 0  # young: kept
    entry = alpha.pilots.registry.read(rec.pilot_id)
    assert entry is not None
    entry.submitted = "2020-01-01T00:00:00+00:00"
    alpha.pilots.registry.write(entry)
    spooled = alpha.spool.pilots()[0]
    spooled.submitted = entry.submitted
    alpha.spool.save_pilot(spooled)
    assert Submitter(beta.cfg).pilots.prune(keep_days=1) == 1  # any server (a later pass)
    assert alpha.pilots.prune(keep_days=1) == 0 and alpha.spool.pilots() == []
    left = [n for n in os.listdir(Path(alpha.cfg.workspace) / p.PILOTS)
            if n.startswith(rec.pilot_id)]
    assert left == []
