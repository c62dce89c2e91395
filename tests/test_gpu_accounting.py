"""GPU figures end to end: a real submitter and a real local pilot on a "GPU node" (the
allocation in CUDA_VISIBLE_DEVICES, a stand-in nvidia-smi on the PATH, as the CI machine
has no GPU); the job's figures reach ``hpc-batch show`` and the pilot's GPU time
``hpc-batch status --json``. Without the tool the job has no usage figures and is ok."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sitekit import Site

SMI = "#!/bin/sh\nsleep 0.5\necho '7, GPU-aaaa, 50, 1000'\necho '8, GPU-bbbb, 0, 1'\n"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path / "site", pilot={"idle_timeout": "2"})
    yield s
    s.close()


def gpu_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tool: bool) -> None:
    """The local pilot inherits CUDA_VISIBLE_DEVICES and PATH (backends.local.ENV_KEEP)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if tool:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(SMI)
        smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("PATH", "%s:/usr/bin:/bin" % bin_dir)


def show(site: Site, name: str) -> dict[str, object]:
    out = site.cli("show", "--config", str(site.config_path), name, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def test_a_jobs_gpu_figures_reach_show_and_the_pilots_gpu_time_status(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_node(monkeypatch, tmp_path, tool=True)
    site.drop("g1", site.sleepy_job("g1", 2.5))
    site.drain(["g1"], timeout=90)
    figures = show(site, "g1")["gpu"]
    assert isinstance(figures, dict)
    assert figures["gpu_devices"] == "7" and figures["gpu_seconds"] >= 2.0
    assert figures["gpu_util_mean_pct"] == 50.0 and figures["gpu_mem_peak_mib"] == 1000.0
    text = site.cli("show", "--config", str(site.config_path), "g1").stdout
    assert "GPU 7: " in text and "mean utilisation 50.0 %" in text
    status = json.loads(site.cli("status", "--config", str(site.config_path), "--json").stdout)
    pilot = status["pilots"][-1]["gpu"]
    assert pilot["devices"] == ["7"] and pilot["busy_s"] >= 2.0 and pilot["idle_s"] is not None
    assert status["gpu_total"]["busy_s"] >= 2.0 and status["site"]["gpu_total"]["pilots"] == 1


def test_without_nvidia_smi_the_job_is_ok_with_time_figures_only(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_node(monkeypatch, tmp_path, tool=False)
    site.drop("g2", site.sleepy_job("g2", 0.5))
    site.drain(["g2"], timeout=90)
    data = show(site, "g2")
    assert data["state"] == "finished" and site.result("g2")["job"]["status"] == "ok"
    figures = data["gpu"]
    assert isinstance(figures, dict) and figures["gpu_devices"] == "7"
    assert "gpu_util_mean_pct" not in figures and "gpu_mem_peak_mib" not in figures
