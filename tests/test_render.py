"""The seed's examples, rendered and answered exactly; quoting that cannot be escaped."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.templates import render
from galaxy_hpc_runner.errors import JobError
from tests.sitekit import TEST_TEMPLATES, Site

SEED_JOB = textwrap.dedent("""\
    script: my_container
    args:
        level: 6
    input_map:
        input: /tmp/foo.mp3
    output_map:
        json_output: /tmp/foo.json
        txt_output:  /tmp/foo.txt
    """)
SEED_COMMAND = ("singularity run --nv --bind /scratch/1234:/mnt /sif/my_container.sif "
                "--level=6 /mnt/foo.mp3 /mnt/foo.txt /mnt/foo.json")


def seed_values(**override: object) -> dict[str, object]:
    values: dict[str, object] = {"workspace": "/scratch/1234", "containers": "/sif",
                                 "scripts": "/s", "level": 6, "input": "foo.mp3",
                                 "txt_output": "foo.txt", "json_output": "foo.json"}
    values.update(override)
    return values


def seed_template() -> str:
    return (TEST_TEMPLATES / "my_container.sh").read_text()


def test_seed_example_renders_to_the_seed_command_line() -> None:
    rendered = render(seed_template(), seed_values())
    assert rendered.splitlines()[-1] == SEED_COMMAND


def test_seed_description_through_validation_uses_basenames(site: Site) -> None:
    media = site.media("foo.mp3")
    text = SEED_JOB.replace("/tmp/foo.mp3", str(media)).replace(
        "/tmp/foo", str(site.root / "results" / "foo"))
    job = d.validate("thing", d.parse(text), site.cfg)
    workspace = site.cfg.workspace + "/jobs/" + site.key("thing")
    assert job.rendered.splitlines()[-1] == (
        "singularity run --nv --bind %s:/mnt %s/my_container.sif --level=6 /mnt/foo.mp3 "
        "/mnt/foo.txt /mnt/foo.json" % (workspace, site.cfg.hpc_env["containers"]))


@pytest.mark.parametrize("value", [
    "; rm -rf ~", "$(touch /tmp/pwned)", "`id`", "a b\nc", "<<input>>", "it's", "",
    "--level=7 /etc/passwd"])
def test_hostile_values_stay_one_literal_word(value: str, tmp_path: Path) -> None:
    script = render("printf '%s|' <<value>> > <<out>>\n",
                    {"value": value, "out": str(tmp_path / "out")})
    subprocess.run(["bash", "-c", script], check=True, cwd=tmp_path)
    assert (tmp_path / "out").read_text() == value + "|"
    assert not Path("/tmp/pwned").exists()


def test_numbers_and_booleans_render_plainly() -> None:
    assert render("echo <<a>> <<b>> <<c>>", {"a": 6, "b": 0.5, "c": True}) == "echo 6 0.5 true"


def test_unknown_placeholders_are_all_named() -> None:
    with pytest.raises(JobError, match=r"<<nope>>, <<other>>"):
        render("echo <<nope>> <<level>> <<other>>", {"level": 1})


def test_seed_result_file_keeps_the_description_and_adds_job() -> None:
    doc = d.parse(SEED_JOB)
    text = d.result_document(doc, d.job_node("error", "Remote command failed with return code 1",
                                             stderr="ERROR: Input file is the wrong format",
                                             rc=1))
    back = yaml.safe_load(text)
    assert list(back) == ["script", "args", "input_map", "output_map", "job"]
    assert back["args"] == {"level": 6}
    assert back["job"] == {"status": "error", "message": "Remote command failed with return code 1",
                           "stderr": "ERROR: Input file is the wrong format", "stdout": "",
                           "rc": 1}


def test_render_command_prints_the_script_without_running_it(site: Site) -> None:
    marker = site.root / "results" / "ran"
    job = site.drop("r1", {"script": "echo_arg", "args": {"value": "x"},
                           "output_map": {"output": str(marker)}})
    proc = site.cli("render", "--config", str(site.config_path), str(job))
    assert proc.returncode == 0, proc.stderr
    assert "printf '%s' x > ran" in proc.stdout
    assert not marker.exists() and site.ledger_lines() == []
