"""The contention benchmark's GPU column: what the pilots measured, from canned results and
heartbeats; absent figures print as ``-``, never as 0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
rep = pytest.importorskip("contention_report")


def phase(way: str, gpu: dict[str, object]) -> dict[str, object]:
    ph = rep.Phase("stream", way, [0.0, 1.0], [5.0, 7.0], submissions=1, idle_gpu_s=3.0,
                   gpu=gpu)
    return rep.summarize(ph)


def test_measured_gpu_from_job_metrics_and_heartbeats() -> None:
    jobs = [{"metrics": {"gpu_devices": "0", "gpu_seconds": 4.0, "gpu_util_mean_pct": 80.0,
                         "gpu_mem_peak_mib": 900.0}},
            {"metrics": {"gpu_devices": "1", "gpu_seconds": 2.0}}, {"status": "ok"}]
    beats = [{"gpus": ["0", "1"], "gpu_busy_seconds": 6.0, "gpu_idle_seconds": 30.0},
             {"gpus": [], "gpu_busy_seconds": 0.0}]
    assert rep.measured_gpu(jobs, beats) == {
        "jobs_gpu_s": 6.0, "util_mean_pct": 80.0, "mem_peak_mib": 900.0,
        "busy_gpu_s": 6.0, "idle_gpu_s": 30.0}
    nothing = rep.measured_gpu([{"metrics": {"runtime_seconds": 1.0}}], [{"gpus": []}])
    assert set(nothing.values()) == {None}


def test_the_table_has_a_measured_gpu_column() -> None:
    rows = {"stream/pilot": phase("pilot", {"busy_gpu_s": 6.0, "idle_gpu_s": 30.0}),
            "stream/sbatch": phase("sbatch", {})}
    table = rep.table(rows).splitlines()
    assert table[0].endswith("| measured GPU-s busy / idle |")
    assert table[2].endswith("| 6.0 / 30.0 |") and table[3].endswith("| - |")
    assert rows["stream/sbatch"]["gpu"] is None
