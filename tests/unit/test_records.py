"""The protocol records: round trips, the version rule, types and bounds, safe reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpc_worker import records as r
from hpc_worker.states import HeartbeatState, PilotState, Reason, ReleaseReason, ResultStatus

SAMPLES: list[r.Record] = [
    r.JobSpec(key="srv=job1", script="upper", walltime=12.5, inputs=["a.txt"],
              outputs=["b.txt"], env={"X": "1"}, server="srv", workspace="/w/jobs/srv=job1"),
    r.RunLine(pilot="P", start="2026-01-01T00:00:00+00:00", slot=1, gpu="3",
              attempt="attempt-1"),
    r.RunLine(pilot="P", released="2026-01-01T00:01:00+00:00",
              reason=ReleaseReason.PILOT_WALLTIME.value, elapsed=60.0, attempt="attempt-1"),
    r.Result(status=ResultStatus.ERROR, message="m", rc=3, reason=Reason.FAILED,
             metrics={"gpu_seconds": 1.5, "gpu_devices": "0"}, attempt="attempt-2"),
    r.Heartbeat(pilot="P", state=HeartbeatState.DRAINING, epoch=1.0, gpus=["0", "1"],
                gpu_idle_seconds=3.0, release_at=100.0, running=["a", "b"]),
    r.PilotEntry(pilot_id="P", submitted="now", state=PilotState.RUNNING, walltime=60.0),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda rec: type(rec).__name__)
def test_every_record_survives_a_round_trip(record: r.Record) -> None:
    text = record.dumps()
    assert json.loads(text)["v"] == r.PROTOCOL_VERSION
    assert type(record).loads(text) == record


def test_a_record_without_a_version_is_version_one_and_read() -> None:
    spec = r.JobSpec.from_json({"key": "k", "walltime": None})
    assert spec.key == "k" and spec.outputs == [] and spec.workspace == ""


def test_a_newer_record_is_refused_naming_both_versions() -> None:
    with pytest.raises(r.ProtocolError) as err:
        r.Result.from_json({"v": r.PROTOCOL_VERSION + 1, "status": "ok", "message": ""},
                           "W/jobs/k/result.json")
    message = str(err.value)
    assert "W/jobs/k/result.json" in message and str(r.PROTOCOL_VERSION + 1) in message
    assert "%d to %d" % (r.OLDEST_READABLE, r.PROTOCOL_VERSION) in message


@pytest.mark.parametrize("data, field", [
    ({"key": 3}, "key"),
    ({"key": "k", "walltime": "10"}, "walltime"),
    ({"key": "k", "walltime": float("nan")}, "walltime"),
    ({"key": "k", "outputs": "x"}, "outputs"),
    ({"key": "k", "outputs": ["x"] * (r.MAX_ITEMS + 1)}, "outputs"),
    ({"key": "k", "env": {"A": 1}}, "env"),
    ({"key": "x" * (r.MAX_STR + 1)}, "key"),
    ({"key": "k", "walltime": True}, "walltime"),
])
def test_wrong_types_and_bounds_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(r.ProtocolError, match=repr(field)):
        r.JobSpec.from_json(data, "job.json")


def test_missing_required_field_and_bad_enum_are_refused() -> None:
    with pytest.raises(r.ProtocolError, match="'key' is missing"):
        r.JobSpec.from_json({})
    with pytest.raises(r.ProtocolError, match="not one of"):
        r.Heartbeat.from_json({"pilot": "P", "state": "dancing", "epoch": 1})
    with pytest.raises(r.ProtocolError, match="plain value"):
        r.Result.from_json({"status": "ok", "message": "", "metrics": {"x": [1]}})


def test_invalid_json_is_a_protocol_error() -> None:
    with pytest.raises(r.ProtocolError, match="not valid JSON"):
        r.JobSpec.loads("{", "job.json")
    with pytest.raises(r.ProtocolError, match="expected a JSON object"):
        r.JobSpec.loads("[]", "job.json")


def test_read_record_refuses_links_special_files_and_big_files(tmp_path: Path) -> None:
    good = tmp_path / "job.json"
    good.write_text(r.JobSpec(key="k").dumps())
    assert r.read_record(r.JobSpec, str(good)).key == "k"
    link = tmp_path / "link.json"
    link.symlink_to(good)
    with pytest.raises(r.ProtocolError, match="cannot be opened safely"):
        r.read_record(r.JobSpec, str(link))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(r.ProtocolError, match="not a regular file"):
        r.read_record(r.JobSpec, str(fifo))
    with pytest.raises(r.ProtocolError, match="more than the 10"):
        r.read_record(r.JobSpec, str(good), limit=10)
    with pytest.raises(FileNotFoundError):
        r.read_record(r.JobSpec, str(tmp_path / "absent.json"))


def test_runs_skip_torn_and_foreign_lines_and_count_releases() -> None:
    lines = [r.RunLine(pilot="A", start="t1").dumps(),
             r.RunLine(pilot="A", released="t2", reason=ReleaseReason.STOP.value,
                       elapsed=5.0).dumps(),
             "not json", json.dumps({"v": 99, "pilot": "B"}),
             r.RunLine(pilot="B", start="t3").dumps(),
             r.RunLine(pilot="B", released="t4", reason=ReleaseReason.PILOT_WALLTIME.value,
                       elapsed=42.0).dumps(),
             '{"pilot": "C", "sta']
    runs = r.parse_runs("\n".join(lines).encode())
    assert [run.pilot for run in runs] == ["A", "A", "B", "B"]
    assert r.count_releases(runs) == 2
    assert r.count_releases(runs, [ReleaseReason.PILOT_WALLTIME.value]) == 1
    assert r.learned_runtime(runs) == 42.0
    assert r.learned_runtime(runs[:1]) is None
