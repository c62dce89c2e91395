"""Our runner inside a real Galaxy 26.1 server, driven through the Galaxy API only."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox.spool import FINISHED, JobRecord, Spool
from hpc_worker import protocol as p
from tests.galaxy.conftest import INPUT_TEXT
from tests.galaxy.server import AMP_WRAPPERS, GalaxyApi, GalaxySite, wait_until

pytestmark = pytest.mark.galaxy
SHOUTED = INPUT_TEXT.upper()


def spool_name(api: GalaxyApi, job_id: str) -> str:
    return str(wait_until(lambda: api.job(job_id).get("external_id"), 30, "external id"))


def record(site: GalaxySite, name: str) -> JobRecord | None:
    return Spool(site.hpc / "spool").get(name)


def wait_record(site: GalaxySite, name: str, states: tuple[str, ...]) -> JobRecord:
    def ready() -> JobRecord | None:
        rec = record(site, name)
        return rec if rec is not None and rec.state in states else None
    return wait_until(ready, 30, "%s in state %s" % (name, "/".join(states)))  # type: ignore


def assert_cleaned_up(site: GalaxySite, name: str) -> None:
    assert not list((site.hpc / "workspace" / "jobs").glob("*" + name))
    assert not list((site.hpc / "dropbox").glob(name + ".*"))


def pilots(site: GalaxySite) -> set[str]:
    return {path.stem for path in (site.hpc / "spool" / "pilots").glob("*.json")}


def start_runs(site: GalaxySite) -> dict[str, int]:
    """How many times each job was started by any pilot (from the pilot logs), by job name
    (the pilot names a job by its workspace key, SERVER=NAME)."""
    counts: dict[str, int] = {}
    for log in (site.hpc / "workspace" / "pilots").glob("*.log"):
        for key in re.findall(r"\((\S+)\) started on slot", log.read_text()):
            name = key.split(p.SERVER_SEP, 1)[-1]
            counts[name] = counts.get(name, 0) + 1
    return counts


def block_slots(api: GalaxyApi, history: str, release: Path, count: int) -> list[str]:
    jobs = [api.run_tool(history, "hpc_wait", {"release": str(release), "label": "b%d" % i})[0]
            for i in range(count)]
    for job in jobs:
        wait_until(lambda job=job: api.job_state(job) == "running", 60, "blocker running")
    return jobs


def test_tool_ends_ok_with_exact_output(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                                        text_dataset: str) -> None:
    job, output = api.run_tool(history, "hpc_shout",
                               {"input": {"src": "hda", "id": text_dataset}, "suffix": "yes!"})
    seen: list[str] = []
    info = api.wait_job(job, 60, seen)
    assert info["state"] == "ok", info
    assert "queued" in seen
    assert api.content(output) == SHOUTED + "yes!\n"
    assert info["exit_code"] == 0
    assert info["tool_stdout"].startswith("shouted dataset_")
    assert info["tool_stderr"] == "note from the HPC side\n"
    assert "tr '[:lower:]' '[:upper:]' < " in info["command_line"]  # the template that ran
    assert_cleaned_up(galaxy_site, info["external_id"])


def test_failing_template_shows_stderr_and_exit_code(galaxy_site: GalaxySite, api: GalaxyApi,
                                                     history: str) -> None:
    job, _ = api.run_tool(history, "hpc_fail", {"message": "wrong format", "code": "3"})
    info = api.wait_job(job, 60)
    assert info["state"] == "error"
    assert info["exit_code"] == 3
    assert "boom: wrong format" in info["tool_stderr"]
    assert info["tool_stdout"] == "about to fail\n"
    assert_cleaned_up(galaxy_site, info["external_id"])


def test_twenty_jobs_share_one_pilot(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                                     text_dataset: str) -> None:
    galaxy_site.stop_pilots()  # start from an empty pool: the burst must queue one pilot
    before = pilots(galaxy_site)
    runs = [api.run_tool(history, "hpc_shout", {"input": {"src": "hda", "id": text_dataset},
                                                "suffix": "job %d" % i}) for i in range(20)]
    infos = [api.wait_job(job, 120) for job, _ in runs]
    assert [info["state"] for info in infos] == ["ok"] * 20
    for i, (_, output) in enumerate(runs):
        assert api.content(output) == SHOUTED + "job %d\n" % i
    new = pilots(galaxy_site) - before
    assert len(new) == 1, new
    claimed_by = {rec.pilot for info in infos if (rec := record(galaxy_site, info["external_id"]))}
    assert claimed_by <= new | {""}


def test_cancel_while_queued_never_runs(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                                        tmp_path: Path) -> None:
    release, marker = tmp_path / "release", tmp_path / "marker"
    blockers = block_slots(api, history, release, galaxy_site.slots)
    job, _ = api.run_tool(history, "hpc_touch", {"marker": str(marker)})
    name = spool_name(api, job)
    wait_record(galaxy_site, name, ("staged",))
    assert api.job_state(job) == "queued"
    api.cancel(job)
    rec = wait_record(galaxy_site, name, (FINISHED,))
    assert rec.message == "Cancelled before it started"
    release.touch()
    assert [api.wait_job(b, 60)["state"] for b in blockers] == ["ok"] * len(blockers)
    time.sleep(1.0)  # a pilot that wrongly got it would have run it by now
    assert not marker.exists()
    assert api.job_state(job) in ("deleted", "deleting")
    assert_cleaned_up(galaxy_site, name)


def test_cancel_while_running_kills_it(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                                       tmp_path: Path) -> None:
    job, _ = api.run_tool(history, "hpc_wait", {"release": str(tmp_path / "never"),
                                                "label": "doomed"})
    wait_until(lambda: api.job_state(job) == "running", 60, "job running")
    name = spool_name(api, job)
    api.cancel(job)
    rec = wait_record(galaxy_site, name, (FINISHED,))
    assert rec.message == "Cancelled while running"
    wait_until(lambda: not list((galaxy_site.hpc / "dropbox").glob(name + ".*")), 10,
               "dropbox files removed")
    assert_cleaned_up(galaxy_site, name)


def test_amp_wrappers_run_their_templates(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                                          text_dataset: str) -> None:
    """Wrapper + template + convention, with a stand-in singularity (tests/galaxy/fakebin)."""
    wav = api.upload_path(history, AMP_WRAPPERS / "test-data" / "tone.wav", "wav")
    audio = {"src": "hda", "id": wav}
    ina = api.run_tool(history, "ina_speech_segmenter",
                       {"input": audio, "detect_gender": False, "vad_engine": "sm"})
    whisper = api.call("POST", "/api/tools", {"tool_id": "whisper", "history_id": history,
                       "inputs": {"input": audio, "model": "tiny", "language": "en",
                                  "prompt": "Dr. O'Neil"}})
    gentle = api.run_tool(history, "gentle_forced_alignment", {
        "audio": audio, "transcript": {"src": "hda", "id": text_dataset},
        "conservative": True})
    for job in (ina[0], whisper["jobs"][0]["id"], gentle[0]):
        assert api.wait_job(job, 90)["state"] == "ok", api.job(job)
    assert json.loads(api.content(ina[1])) == {
        "segments": [{"label": "speech", "start": 0.0, "end": 1.0}],
        "detect_gender": "false", "vad_engine": "sm"}
    outputs = {o["output_name"]: o["id"] for o in whisper["outputs"]}
    transcript = json.loads(api.content(outputs["transcript_json"]))
    assert transcript["text"] == "hello (en, tiny)" and transcript["prompt"] == "Dr. O'Neil"
    assert api.content(outputs["transcript_text"]) == "hello (en, tiny)\n"
    assert api.content(outputs["transcript_vtt"]).startswith("WEBVTT\n")
    alignment = json.loads(api.content(gentle[1]))
    assert [w["word"] for w in alignment["words"]] == INPUT_TEXT.split()
    assert alignment["conservative"] is True


def test_restart_loses_nothing(galaxy_site: GalaxySite, api: GalaxyApi, history: str,
                               text_dataset: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    blockers = block_slots(api, history, release, galaxy_site.slots)
    data = {"src": "hda", "id": text_dataset}
    queued = [api.run_tool(history, "hpc_shout", {"input": data, "suffix": "q%d" % i})
              for i in range(3)]
    script_mode = api.run_tool(history, "gx_sections", {"first|value": "r1"})  # Galaxy-script
    for job, _ in [*queued, script_mode]:
        wait_record(galaxy_site, spool_name(api, job), ("staged",))
    late = api.run_tool(history, "hpc_shout", {"input": data, "suffix": "late"})
    galaxy_site.stop()
    release.touch()  # blockers end and the queued jobs run while Galaxy is down
    time.sleep(1.0)
    galaxy_site.start()
    for job in blockers:
        assert api.wait_job(job, 90)["state"] == "ok"
    for i, (job, output) in enumerate([*queued, late]):
        assert api.wait_job(job, 90)["state"] == "ok"
        assert api.content(output) == SHOUTED + ("late" if i == 3 else "q%d" % i) + "\n"
    assert api.wait_job(script_mode[0], 120)["state"] == "ok"
    assert api.content(script_mode[1]) == "first=r1\nsecond=two\nquiet\n"
    names = [api.job(job)["external_id"]
             for job in blockers + [j for j, _ in [*queued, late, script_mode]]]
    runs = start_runs(galaxy_site)
    assert all(runs.get(name) == 1 for name in names), runs
