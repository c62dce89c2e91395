"""GPU figures in ``show`` (per job) and ``status`` (per pilot, this server's total, the
site's total): from canned output of the real nvidia-smi through the pilot's accounting to
the admin's views; absent tools mean absent figures, never a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.cli import gpu_figures
from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.spool import PilotRecord, Spool
from hpc_worker import gpu
from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, PilotEntry
from hpc_worker.states import HeartbeatState, JobState, PilotState, ResultStatus

PROJECT = Path(__file__).resolve().parents[2]

# nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used --format=csv,noheader,nounits
# as a real driver (535) prints it on a two-GPU node, the second GPU without figures
CANNED = ("0, GPU-5b6c1f0e-8a3d-2c71-93f4-0d2e7a9b1c44, 87, 30512\n"
          "1, GPU-0f9e3a21-77c2-4d10-b1e8-6a5c4f3d2e19, [N/A], [Not Supported]\n")
CANNED_LATER = "0, GPU-5b6c1f0e-8a3d-2c71-93f4-0d2e7a9b1c44, 41, 31990\n"


def metrics_from(samples: list[str], device: str, runtime: float) -> dict[str, object]:
    alloc = gpu.allocation({"CUDA_VISIBLE_DEVICES": "0,1"}, slots=2)
    usage = gpu.Usage()
    for text in samples:
        usage.add(gpu.parse_query(text)[device])
    return gpu.job_metrics(alloc, device, runtime, usage)


def test_canned_nvidia_smi_output_becomes_the_job_figures_and_line() -> None:
    figures = gpu_figures.job_figures(metrics_from([CANNED, CANNED_LATER], "0", 12.34))
    assert figures == {"gpu_devices": "0", "gpu_shared_by": 1, "gpu_seconds": 12.34,
                       "gpu_mem_peak_mib": 31990.0, "gpu_util_mean_pct": 64.0,
                       "gpu_samples": 2}
    assert gpu_figures.job_line(figures) == (
        "GPU 0: 12.3 GPU-s, peak memory 31990 MiB, mean utilisation 64.0 %")


def test_a_gpu_without_figures_and_a_node_without_gpus() -> None:
    silent = gpu_figures.job_figures(metrics_from([CANNED], "1", 3.0))
    assert silent is not None and "gpu_mem_peak_mib" not in silent
    assert gpu_figures.job_line(silent) == "GPU 1: 3.0 GPU-s"
    no_tool = gpu.job_metrics(gpu.allocation({"CUDA_VISIBLE_DEVICES": "3"}, 4, 4), "3", 1.0,
                              None)
    assert gpu_figures.job_line(gpu_figures.job_figures(no_tool)) == (
        "GPU 3 (shared by 4 slots): 1.0 GPU-s")
    no_gpu = gpu.job_metrics(gpu.allocation({}, 1), "0", 1.0, gpu.Usage())
    for metrics in (no_gpu, {"runtime_seconds": 2.0}, None, "garbage", {"gpu_seconds": None}):
        assert gpu_figures.job_figures(metrics) is None
    assert gpu_figures.job_line(None) is None


def test_pilot_figures_and_totals() -> None:
    beat = Heartbeat(pilot="P", state=HeartbeatState.RUNNING, epoch=1.0, gpus=["0", "1"],
                     gpu_busy_seconds=100.04, gpu_idle_seconds=20.0).to_json()
    one = gpu_figures.pilot_figures(beat)
    assert one == {"devices": ["0", "1"], "slots_per_gpu": 1, "busy_s": 100.0, "idle_s": 20.0}
    assert gpu_figures.pilot_text(one) == "  GPU 0,1 busy 100 s idle 20 s"
    cpu_only = Heartbeat(pilot="Q", state=HeartbeatState.RUNNING, epoch=1.0).to_json()
    assert gpu_figures.pilot_figures(cpu_only) is None and gpu_figures.pilot_figures(None) is None
    assert gpu_figures.total([one, None, one]) == {"pilots": 2, "devices": 4, "busy_s": 200.0,
                                                    "idle_s": 40.0}
    assert gpu_figures.total([None]) is None and gpu_figures.total_text(None, "x") is None
    assert gpu_figures.pilot_text(None) == ""


# -- the admin's views, on a spool and workspace written as the real parts write them -----
def hpc_batch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), HPC_BATCH_CONFIG=str(config))
    return subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=PROJECT)


def put_pilot(workspace: Path, pilot_id: str, server: str, state: PilotState,
              gpus: list[str], busy: float, idle: float) -> None:
    pilots = workspace / p.PILOTS
    pilots.mkdir(parents=True, exist_ok=True)
    entry = PilotEntry(pilot_id=pilot_id, submitted=p.now_iso(), state=state,
                       scheduler_id="1" + pilot_id[-2:], submitter=server, backend="slurm")
    p.write_json(str(pilots / (pilot_id + p.PILOT_ENTRY)), entry.to_json())
    beat = Heartbeat(pilot=pilot_id, state=HeartbeatState.RUNNING, epoch=time.time(),
                     gpus=gpus, gpu_busy_seconds=busy, gpu_idle_seconds=idle)
    p.write_json(str(pilots / (pilot_id + p.HEARTBEAT)), beat.to_json())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for sub in ("dropbox", "media", "ws"):
        (tmp_path / sub).mkdir()
    path = tmp_path / "site.ini"
    path.write_text("[dropbox]\npath = dropbox\nallowed_input_roots = media\n"
                    "allowed_output_roots = media\n[hpc_env]\nworkspace = %s/ws\nserver = alpha\n"
                    "scripts = /s\ncontainers = /c\n[submitter]\ninterval = 5\n" % tmp_path)
    cfg = load_config(path)
    spool = Spool(cfg.spool)
    for name, metrics in (("gpujob", metrics_from([CANNED], "0", 7.5)),
                          ("cpujob", {"runtime_seconds": 1.0})):
        rec = spool.create(name, {"script": "x"})
        spool.transition(rec, JobState.STAGED)
        spool.transition(rec, JobState.CLAIMED, pilot="pilot-alpha-20261127T070000-aaaa01")
        node = d.job_node(ResultStatus.OK, "", rc=0, metrics=metrics)
        p.atomic_write(str(cfg.dropbox / (name + d.FINISHED_SUFFIX)),
                       d.result_document(rec.doc, node))
        spool.transition(rec, JobState.FINISHED, status="ok", message="", rc=0)
    ws = Path(cfg.workspace)
    put_pilot(ws, "pilot-alpha-20261127T070000-aaaa01", "alpha", PilotState.GONE, ["0"], 7.5, 3)
    put_pilot(ws, "pilot-alpha-20261127T071000-aaaa02", "alpha", PilotState.RUNNING, ["0", "1"],
              10, 50)
    put_pilot(ws, "pilot-beta-20261127T072000-bbbb01", "beta", PilotState.RUNNING, ["2"], 4, 6)
    put_pilot(ws, "pilot-beta-20261127T073000-bbbb02", "beta", PilotState.RUNNING, [], 0, 0)
    for pilot_id, state in (("pilot-alpha-20261127T070000-aaaa01", PilotState.GONE),
                            ("pilot-alpha-20261127T071000-aaaa02", PilotState.RUNNING)):
        spool.save_pilot(PilotRecord(pilot_id=pilot_id, scheduler_id="1" + pilot_id[-2:],
                                     backend="slurm", submitted=p.now_iso(), state=state))
    return path


def test_show_gives_a_jobs_gpu_figures_and_none_for_a_cpu_job(config: Path) -> None:
    data = json.loads(hpc_batch(config, "show", "gpujob", "--json").stdout)
    assert data["gpu"] == {"gpu_devices": "0", "gpu_shared_by": 1, "gpu_seconds": 7.5,
                           "gpu_mem_peak_mib": 30512.0, "gpu_util_mean_pct": 87.0,
                           "gpu_samples": 1}
    text = hpc_batch(config, "show", "gpujob").stdout
    assert "GPU 0: 7.5 GPU-s, peak memory 30512 MiB, mean utilisation 87.0 %" in text
    cpu = hpc_batch(config, "show", "cpujob")
    assert cpu.returncode == 0 and "GPU" not in cpu.stdout
    assert json.loads(hpc_batch(config, "show", "cpujob", "--json").stdout)["gpu"] is None


def test_status_gives_gpu_time_per_pilot_and_totals(config: Path) -> None:
    data = json.loads(hpc_batch(config, "status", "--json").stdout)
    mine = {pl["pilot_id"]: pl["gpu"] for pl in data["pilots"]}
    assert mine["pilot-alpha-20261127T071000-aaaa02"] == {
        "devices": ["0", "1"], "slots_per_gpu": 1, "busy_s": 10.0, "idle_s": 50.0}
    assert mine["pilot-alpha-20261127T070000-aaaa01"]["idle_s"] == 3.0  # gone: its last word
    assert data["gpu_total"] == {"pilots": 2, "devices": 3, "busy_s": 17.5, "idle_s": 53.0}
    site = {pl["pilot_id"]: pl for pl in data["site"]["pilots"]}
    assert site["pilot-beta-20261127T072000-bbbb01"]["gpu"]["idle_s"] == 6.0
    assert site["pilot-beta-20261127T073000-bbbb02"]["gpu"] is None  # a CPU pilot
    assert "gpu_time" not in site["pilot-beta-20261127T072000-bbbb01"]
    assert data["site"]["gpu_total"] == {"pilots": 3, "devices": 4, "busy_s": 21.5,
                                         "idle_s": 59.0}
    text = hpc_batch(config, "status").stdout
    assert "GPU 0,1 busy 10 s idle 50 s" in text
    assert "GPU time of this server's pilots above (2 pilot(s), 3 device(s)): busy 18 s" in text
    assert "pilot-beta-20261127T072000-bbbb01 of beta: running" in text
    assert "GPU time of the site's pilots, every server (3 pilot(s), 4 device(s))" in text


def test_status_without_any_gpu_says_nothing_of_gpus(tmp_path: Path, config: Path) -> None:
    ws = Path(load_config(config).workspace) / p.PILOTS
    for path in ws.glob("*" + p.HEARTBEAT):
        path.unlink()
    data = json.loads(hpc_batch(config, "status", "--json").stdout)
    assert data["gpu_total"] is None and data["site"]["gpu_total"] is None
    assert "GPU" not in hpc_batch(config, "status").stdout
