"""The Galaxy runner's Galaxy-free parts: mode choice, template-mode refusals, Galaxy-script mode.

A tool's parameter tree is read by attribute only (type, inputs, cases, test_param,
multiple), so plain namespaces stand in for Galaxy's parameter objects here; the
same checks run against real Galaxy tools in tests/galaxy/test_galaxy_script_mode.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.errors import ConfigError, JobError
from galaxy_hpc_runner.galaxy import descriptions as gd
from galaxy_hpc_runner.galaxy import galaxy_script as gs
from tests.sitekit import minimal_site_ini

# Galaxy 26.1's CLUSTER_SLOTS_STATEMENT.sh, shortened to the branches used here.
CLUSTER = """export GALAXY_SLOTS_CONFIGURED="1"
if [ -n "$SLURM_CPUS_ON_NODE" ]; then
    GALAXY_SLOTS="$SLURM_CPUS_ON_NODE"
elif [ -n "$GALAXY_SLOTS" ]; then
    GALAXY_SLOTS=$GALAXY_SLOTS
else
    GALAXY_SLOTS="1"
    unset GALAXY_SLOTS_CONFIGURED
fi
export GALAXY_SLOTS
"""


def data(multiple: bool = False) -> NS:
    return NS(type="data", multiple=multiple)


def text() -> NS:
    return NS(type="text")


@pytest.mark.parametrize(("params", "mode"), [
    ({}, gd.Mode.GALAXY), ({"template": "whisper"}, gd.Mode.TEMPLATE),
    ({"mode": "template"}, gd.Mode.TEMPLATE), ({"mode": "Galaxy", "template": "x"}, gd.Mode.GALAXY),
])
def test_mode(params: dict[str, str], mode: gd.Mode) -> None:
    assert gd.run_mode(params) == mode


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="mode='pulsar': use galaxy or template"):
        gd.run_mode({"mode": "pulsar"})


def test_a_plain_tool_fits_template_mode() -> None:
    inputs = {"input": data(), "model": text(),
              "cond": NS(type="conditional", test_param=NS(name="kind"), cases=[
                  NS(inputs={"size": text()}), NS(inputs={"size": text(), "extra": data()})]),
              "opts": NS(type="section", inputs={"language": text()})}
    shape = list(gd.tool_shape(inputs))
    assert [s.name for s in shape] == ["input", "model", "cond|kind", "cond|size", "cond|size",
                                       "cond|extra", "opts|language"]
    assert gd.template_mode_problems(shape, {"out": (False, False)}) == []


def test_template_mode_names_every_problem() -> None:
    inputs = {"queries": NS(type="repeat", inputs={"input": data()}),
              "first": NS(type="section", inputs={"value": text()}),
              "second": NS(type="section", inputs={"value": text()}),
              "many": data(multiple=True), "coll": NS(type="data_collection")}
    problems = gd.template_mode_problems(list(gd.tool_shape(inputs)), {
        "plain": (False, False), "found": (False, True), "lines": (True, False)})
    assert [problem.split(":")[0] for problem in problems] == [
        "repeat 'queries'", "data parameter 'many' takes several datasets (multiple=\"true\")",
        "collection input 'coll'", "parameters 'first|value' and 'second|value' share the name "
        "'value'", "output 'found' discovers datasets", "output collection 'lines'"]
    assert all(problem.endswith("Galaxy-script mode (destination param mode: galaxy)")
               for problem in problems)


def _cfg(tmp_path: Path) -> Any:
    return load_config(minimal_site_ini(tmp_path))


def test_template_is_installed_once_and_a_sites_own_is_kept(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = gs.install_template(cfg)
    assert path.read_text() == gs.TEMPLATE_TEXT
    path.write_text(gs.TEMPLATE_TEXT.replace("cd <<workdir>>", "module load x\ncd <<workdir>>"))
    gs.install_template(cfg)
    assert "module load x" in path.read_text()


def test_unwritable_templates_directory_says_what_to_do(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    os.chmod(cfg.templates, 0o500)
    try:
        if os.access(cfg.templates, os.W_OK):
            pytest.skip("running as root: the directory stays writable")
        with pytest.raises(ConfigError, match=r"cannot write it .*copy"):
            gs.install_template(cfg)
    finally:
        os.chmod(cfg.templates, 0o700)


def test_description_runs_galaxys_script_in_its_directory(tmp_path: Path) -> None:
    """Validated and rendered as the submitter does, then run as the pilot would."""
    cfg = _cfg(tmp_path)
    gs.install_template(cfg)
    work = tmp_path / "job dir 'x'"
    work.mkdir()
    script = work / "galaxy_7.sh"
    script.write_text("#!/bin/bash\npwd > where\necho \"$HPC_BATCH_SLOT\" > slot\nexit 3\n")
    doc = gs.description(str(script), str(work), "1h", {gd.META_GALAXY_JOB_ID: 7})
    assert doc["meta"] == {"galaxy_job_id": 7} and doc["walltime"] == "1h"
    job = d.validate("galaxy-7-abc", doc, cfg)
    assert job.inputs == {} and job.outputs == {}  # nothing is copied
    run = tmp_path / "run.sh"
    run.write_text(job.rendered)
    proc = subprocess.run(["bash", str(run)], cwd=tmp_path, env=dict(
        os.environ, HPC_BATCH_SLOT="2", CUDA_VISIBLE_DEVICES="5"), check=False, timeout=30)
    assert proc.returncode == 3  # the tool's exit code is the job's
    assert (work / "where").read_text().strip() == str(work)
    assert gs.slot_info(str(work)) == {"slot": "2", "gpu": "5", "host": os.uname().nodename}


@pytest.mark.parametrize(("env", "pilot_slots", "fixed", "expected"), [
    ({"SLURM_CPUS_ON_NODE": "8"}, 4, None, "2"),
    ({"SLURM_CPUS_ON_NODE": "8"}, 1, None, "8"),
    ({"SLURM_CPUS_ON_NODE": "3"}, 4, None, "3"),  # fewer CPUs than slots: Galaxy's value
    ({}, 4, None, "1"),
    ({"SLURM_CPUS_ON_NODE": "8"}, 4, "5", "5"),
])
def test_galaxy_slots_share_the_pilots_cpus(env: dict[str, str], pilot_slots: int,
                                            fixed: str | None, expected: str) -> None:
    statement = gs.slots_statement(CLUSTER, pilot_slots, fixed)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GALAXY_"))}
    out = subprocess.run(["bash", "-c", statement + 'echo "$GALAXY_SLOTS"'], env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == expected


def test_bad_galaxy_slots_is_refused() -> None:
    with pytest.raises(JobError, match="galaxy_slots='many'"):
        gs.slots_statement(CLUSTER, 2, "many")


def test_gpu_request() -> None:
    assert gs.gpu_requested([NS(type="package", name="gpu"), NS(type="compute", name="gpu")])
    assert not gs.gpu_requested([NS(type="package", name="whisper")])
    assert gs.gpu_requested([], [NS(resource_type="cuda_device_count_min",
                                    value_or_expression=1)])
    assert gs.gpu_statements(True) == ['GALAXY_GPU_ENABLED="true"; export GALAXY_GPU_ENABLED']


def test_a_node_without_the_working_directory_says_so(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    gs.install_template(cfg)
    gone = tmp_path / "not-mounted"
    job = d.validate("galaxy-8-abc", gs.description(str(gone / "galaxy_8.sh"), str(gone)), cfg)
    proc = subprocess.run(["bash", "-c", job.rendered], cwd=tmp_path, capture_output=True,
                          text=True, check=False, timeout=30)
    assert proc.returncode == 1
    assert "needs Galaxy's job_working_directory on a shared file system" in proc.stderr
    assert not gs.tool_ran(str(gone))
    message = gs.not_run_message(proc.returncode, proc.stderr)
    assert message.startswith("Galaxy's job script ended with exit code 1 before the tool ran")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "tool_stdout").write_text("")
    assert gs.tool_ran(str(tmp_path))


def test_finish_files_never_overwrite_the_scripts_exit_code(tmp_path: Path) -> None:
    from galaxy_hpc_runner.galaxy import outcomes as go
    state = NS(output_file=str(tmp_path / "g.o"), error_file=str(tmp_path / "g.e"),
               exit_code_file=str(tmp_path / "g.ec"), job_id="galaxy-1-abc",
               job_wrapper=NS(working_directory=str(tmp_path)))
    outcome = go.outcome_from_node({"status": "error", "reason": "failed", "rc": 2,
                                    "stdout": "o", "stderr": "e", "pilot": "p1", "host": "h"})
    go.write_all(go.job_script_streams(state, outcome))
    assert (tmp_path / "g.ec").read_text() == "2\n"  # the script never wrote one
    (tmp_path / "g.ec").write_text("0\n")  # the tool's own exit code, as the script wrote it
    go.write_all(go.job_script_streams(state, outcome))
    assert (tmp_path / "g.ec").read_text() == "0\n"
    assert (tmp_path / "g.e").read_text() == "e"
    files = go.template_streams(state, outcome)
    assert files[str(tmp_path / "tool_stderr")] == "e" and files[state.exit_code_file] == "2\n"
    assert go.metrics(outcome.node) == {"pilot": "p1", "host": "h"}
