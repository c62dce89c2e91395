"""The pilot registry's lock, entries, pruning and picture; the deployed pilot program.

Real files through the real local transport; no scheduler, no sleeps beyond the
lock's own polling.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from galaxy_hpc_runner.config import default_server_tag
from galaxy_hpc_runner.dropbox import deploy, registry, registry_lock
from galaxy_hpc_runner.dropbox.registry import Registry, RegistryLockTimeout, id_epoch
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker import protocol as p
from hpc_worker.records import PROTOCOL_VERSION, PilotEntry
from hpc_worker.states import PilotState

PROJECT = Path(__file__).resolve().parents[2]


def _registry(tmp_path: Path, server: str = "alpha") -> Registry:
    p.ensure_layout(str(tmp_path))
    return Registry(LocalTransport(), str(tmp_path), server)


def test_lock_is_exclusive_between_many_holders(tmp_path: Path) -> None:
    inside, overlaps, rounds = [0], [0], 40
    barrier = threading.Barrier(4)

    def worker() -> None:
        reg = _registry(tmp_path)  # each thread its own registry object, like servers
        barrier.wait()
        for _ in range(rounds):
            with reg.lock(wait=30):
                inside[0] += 1
                if inside[0] > 1:
                    overlaps[0] += 1
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 0
    assert not os.path.exists(tmp_path / p.PILOTS / registry.LOCK_NAME)


def test_a_held_lock_times_out_naming_its_holder(tmp_path: Path) -> None:
    reg, other = _registry(tmp_path, "alpha"), _registry(tmp_path, "beta")
    with reg.lock(), pytest.raises(RegistryLockTimeout, match="alpha"):
        other.acquire(wait=0.2)
    token = other.acquire(wait=1)  # free again once released
    other.release(token)


def foreign_lock(token: str, **changes: object) -> str:
    """A lock as a submitter on another machine writes it."""
    data = json.loads(registry.lock_text("elsewhere", token))
    data.update(host="other-host", boot="0000-other-boot")
    data.update(changes)
    return json.dumps(data)


def test_a_lock_unchanged_for_the_lease_is_broken_and_a_refreshed_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_lock, "LOCK_LEASE", 0.6)
    monkeypatch.setattr(registry_lock, "LOCK_MARGIN", 0.2)
    reg = _registry(tmp_path)
    lock = tmp_path / p.PILOTS / registry.LOCK_NAME
    lock.write_text(foreign_lock("t0", epoch=time.time() + 3600))  # its clock says nothing
    started = time.monotonic()
    token = reg.acquire(wait=5)
    assert 0.6 <= time.monotonic() - started < 3
    assert json.loads(lock.read_text())["token"] == token
    reg.release(token)
    stop = threading.Event()

    def live_holder() -> None:  # another host's holder at work: its content keeps changing
        seq = 0
        while not stop.is_set():
            seq += 1
            p.atomic_write(str(lock), foreign_lock("t1", seq=seq, epoch=0))
            time.sleep(0.1)

    p.atomic_write(str(lock), foreign_lock("t1", epoch=0))
    thread = threading.Thread(target=live_holder)
    thread.start()
    try:
        with pytest.raises(RegistryLockTimeout, match="elsewhere"):
            reg.acquire(wait=2)  # more than three leases
    finally:
        stop.set()
        thread.join()
    assert json.loads(lock.read_text())["token"] == "t1"
    assert sorted(os.listdir(lock.parent)) == [registry.LOCK_NAME]  # no breaker left


def test_an_empty_lock_left_by_a_dead_holder_is_broken(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_lock, "LOCK_LEASE", 0.3)
    monkeypatch.setattr(registry_lock, "LOCK_MARGIN", 0.1)
    reg = _registry(tmp_path)
    lock = tmp_path / p.PILOTS / registry.LOCK_NAME
    lock.write_text("")
    token = reg.acquire(wait=5)
    assert json.loads(lock.read_text())["token"] == token


def test_the_holder_refreshes_its_lease_and_gives_up_past_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_lock, "LOCK_LEASE", 1.0)
    monkeypatch.setattr(registry_lock, "LOCK_MARGIN", 0.4)
    monkeypatch.setattr(registry_lock, "LOCK_REFRESH", 0.1)
    holder, waiter = _registry(tmp_path, "alpha"), _registry(tmp_path, "beta")
    lock = tmp_path / p.PILOTS / registry.LOCK_NAME
    entry = PilotEntry(pilot_id="pilot-alpha-1", submitted=p.now_iso())
    with holder.lock() as token:
        for _ in range(25):  # 2.5 s of work, each step a registry call: the lease is kept
            holder.write(entry)
            time.sleep(0.1)
            with pytest.raises(RegistryLockTimeout):
                waiter.acquire(wait=0)
        assert json.loads(lock.read_text())["seq"] > 5
        time.sleep(0.7)  # one step too long: past LEASE - MARGIN
        with pytest.raises(registry.RegistryLockLost, match="nothing more is written"):
            holder.write(entry)
    assert json.loads(lock.read_text())["token"] == token  # left for the waiters to break
    other = waiter.acquire(wait=5)
    assert json.loads(lock.read_text())["token"] == other


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    token = reg.acquire()
    lock = tmp_path / p.PILOTS / registry.LOCK_NAME
    lock.write_text(json.dumps({"owner": "other", "token": "theirs", "epoch": time.time()}))
    reg.release(token)
    assert json.loads(lock.read_text())["token"] == "theirs"


def test_entries_round_trip_and_unreadable_ones_are_skipped(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    entry = PilotEntry(pilot_id="pilot-alpha-20260101T000000-abcdef", submitted=p.now_iso(),
                       submitter="alpha", backend="local", slots=2, walltime=60.0)
    reg.write(entry)
    (tmp_path / p.PILOTS / ("broken" + registry.ENTRY_SUFFIX)).write_text("{not json")
    assert reg.entries() == {entry.pilot_id: entry}
    assert reg.read(entry.pilot_id) == entry
    assert entry.state is PilotState.SUBMITTING


def test_prune_removes_old_gone_pilots_and_their_files_only(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    old, young = "pilot-alpha-20200101T000000-aaaaaa", "pilot-alpha-20990101T000000-bbbbbb"
    for pid, state in ((old, PilotState.GONE), (young, PilotState.GONE)):
        reg.write(PilotEntry(pilot_id=pid, submitted=p.now_iso() if pid == young
                             else "2020-01-01T00:00:00+00:00", state=state))
        for suffix in p.PILOT_SUFFIXES[1:]:
            Path(p.pilot_path(str(tmp_path), pid, suffix)).write_text("x")
    orphan = "pilot-20200101T000000-cccccc"  # an older release's pilot: files, no entry
    Path(p.pilot_path(str(tmp_path), orphan, p.PILOT_LOG)).write_text("log")
    assert reg.prune(time.time() - 86400) == 1
    left = sorted(os.listdir(tmp_path / p.PILOTS))
    assert left == sorted(young + s for s in p.PILOT_SUFFIXES)
    assert id_epoch(young) is not None and id_epoch("no-date") is None


def test_picture_groups_the_queue_by_server_and_marks_our_pilots(tmp_path: Path) -> None:
    reg = _registry(tmp_path, "alpha")
    for key in (p.hpc_key("alpha", "a1"), p.hpc_key("beta", "b1"), p.hpc_key("beta", "b2")):
        Path(p.marker(str(tmp_path), p.READY, key)).touch()
    Path(p.marker(str(tmp_path), p.CLAIMED, p.claim_name(p.hpc_key("beta", "b3"), "x"))).touch()
    reg.write(PilotEntry(pilot_id="pilot-beta-1", submitted=p.now_iso(), submitter="beta",
                         state=PilotState.RUNNING, scheduler_id="7"))
    picture = reg.picture()
    assert picture["servers"] == ["alpha", "beta"]
    assert picture["queue"] == {"alpha": {"ready": 1, "claimed": 0},
                                "beta": {"ready": 2, "claimed": 1}}
    assert [(i["pilot_id"], i["mine"]) for i in picture["pilots"]] == [("pilot-beta-1", False)]


def test_default_server_tag_is_stable_and_plain() -> None:
    tag = default_server_tag()
    assert tag == default_server_tag()
    assert tag and all(c.isalnum() or c == "-" for c in tag)


def test_pilot_program_is_deterministic_versioned_and_runs(tmp_path: Path) -> None:
    name, data = deploy.build()
    deploy.build.cache_clear()
    assert deploy.build() == (name, data)
    assert name.startswith("hpc_worker-v%d-" % PROTOCOL_VERSION) and name.endswith(".pyz")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert "__main__.py" in names and "hpc_worker/pilot.py" in names
        assert {i.date_time for i in archive.infolist()} == {deploy.FIXED_TIME}
    target = tmp_path / name
    target.write_bytes(data)
    done = subprocess.run([sys.executable, str(target), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0 and "--pilot-id" in done.stdout


def test_a_lock_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "from galaxy_hpc_runner.dropbox import "
                           "registry_lock as r; print(r.lock_text('killed', 't'))"],
                          capture_output=True, text=True, check=True, cwd=PROJECT)
    lock = tmp_path / p.PILOTS / registry.LOCK_NAME
    lock.write_text(dead.stdout.strip())
    assert registry.parse_lock(lock.read_text()).pid_start  # it said when it started
    started = time.monotonic()
    token = reg.acquire(wait=5)
    assert time.monotonic() - started < 2 and json.loads(lock.read_text())["token"] == token


def test_same_host_checks_tell_a_live_holder_a_reused_pid_and_a_container(
        tmp_path: Path) -> None:
    me = registry.parse_lock(registry.lock_text("me", "t"))
    assert not me.dead_here()  # this very process
    reused = registry.parse_lock(registry.lock_text("me", "t").replace(
        '"pid_start": "%s"' % me.pid_start, '"pid_start": "1"'))
    assert reused.pid_start == "1" and reused.dead_here()  # same pid, another process
    gone = registry.parse_lock(json.dumps(dict(json.loads(me.raw), pid=2 ** 22 + 1)))
    assert gone.dead_here()
    elsewhere = [dict(json.loads(gone.raw), pidns="pid:[1]"),  # a container, same host name
                 dict(json.loads(gone.raw), boot="another-boot"),
                 dict(json.loads(gone.raw), host="another-host"),
                 {k: v for k, v in json.loads(gone.raw).items() if k != "boot"}]
    for data in elsewhere:
        assert not registry.parse_lock(json.dumps(data)).dead_here(), data


def test_picture_gives_gpu_time_of_live_and_the_newest_gone_pilots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_worker.records import Heartbeat
    from hpc_worker.states import HeartbeatState

    monkeypatch.setattr(registry, "GONE_BEATS", 1)
    reg = _registry(tmp_path, "alpha")
    for minute, state in ((1, PilotState.GONE), (2, PilotState.GONE), (3, PilotState.RUNNING)):
        pid = "pilot-alpha-20261127T06%02d00-aaaaaa" % minute
        reg.write(PilotEntry(pilot_id=pid, submitted="2026-11-27T06:%02d:00+00:00" % minute,
                             state=state, submitter="alpha"))
        beat = Heartbeat(pilot=pid, state=HeartbeatState.RUNNING, epoch=time.time(),
                         gpus=["0"], gpu_busy_seconds=minute, gpu_idle_seconds=1.0)
        p.write_json(p.pilot_path(str(tmp_path), pid, p.HEARTBEAT), beat.to_json())
    live_only = [i.get("gpu_time") for i in reg.picture()["pilots"]]
    assert [t["gpu_busy_seconds"] if t else None for t in live_only] == [None, None, 3.0]
    with_gone = [i.get("gpu_time") for i in reg.picture(with_gone=True)["pilots"]]
    assert [t["gpu_busy_seconds"] if t else None for t in with_gone] == [None, 2.0, 3.0]
