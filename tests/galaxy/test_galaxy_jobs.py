"""The runner's Galaxy-free half: the tool convention, outcomes, pools, the example job_conf."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox.spool import Spool
from galaxy_hpc_runner.errors import ConfigError
from galaxy_hpc_runner.galaxy import batcher as gb
from galaxy_hpc_runner.galaxy import descriptions as gd
from galaxy_hpc_runner.galaxy import outcomes as go
from hpc_worker.states import Reason
from tests.galaxy.server import GALAXY_VENV, PROJECT, install_galaxy
from tests.sitekit import minimal_site_ini

pytestmark = pytest.mark.galaxy


def test_template_name_from_tool_id_or_destination() -> None:
    assert gd.template_for("whisper", {}) == "whisper"
    assert gd.template_for("toolshed.example.org/repos/amp/whisper/whisper/1.0", {}) == "whisper"
    assert gd.template_for("whisper", {"template": "whisper_cpu"}) == "whisper_cpu"


def test_description_follows_the_convention() -> None:
    params = {"input": object(), "model": "tiny", "cond": {"__current_case__": 0,
                                                            "language": "en", "n": 3},
              "flags": ["a", "b"], "prompt": None, "__job_resource": {"x": 1}, "dbkey": "?"}
    doc = gd.build_description("whisper", params, {"cond|input": "/data/a.dat"},
                               {"transcript_json": "/data/b.dat"}, walltime="2h",
                               meta={"galaxy_job_id": 7})
    assert doc == {"script": "whisper",
                   "args": {"model": "tiny", "language": "en", "n": 3, "flags": "a,b",
                            "prompt": None},
                   "input_map": {"input": "/data/a.dat"},
                   "output_map": {"transcript_json": "/data/b.dat"},
                   "walltime": "2h", "meta": {"galaxy_job_id": 7}}


FINISH, FAIL = go.Action.FINISH, go.Action.FAIL


@pytest.mark.parametrize(("node", "action", "runner_state"), [
    ({"status": "ok", "rc": 0}, FINISH, None),
    ({"status": "ok", "rc": None}, FAIL, None),
    ({"status": "error", "rc": 3, "reason": "failed", "stderr": "bad"}, FINISH, None),
    ({"status": "error", "rc": 1, "reason": "failed",
      "stderr": "RuntimeError: CUDA out of memory."}, FAIL, go.MEMORY_LIMIT_REACHED),
    ({"status": "error", "rc": 137, "reason": "failed", "stderr": "Killed\n"}, FAIL,
     go.MEMORY_LIMIT_REACHED),
    ({"status": "error", "rc": -15, "reason": "walltime"}, FAIL, go.WALLTIME_REACHED),
    ({"status": "error", "rc": 0, "reason": "missing_output"}, FAIL, None),
    ({"status": "error", "rc": None, "reason": "lost"}, FAIL, None),
    ({"status": "error", "reason": "invalid"}, FAIL, None),
])
def test_outcomes(node: dict[str, object], action: go.Action, runner_state: str | None) -> None:
    outcome = go.outcome_from_node(node)
    assert (outcome.action, outcome.runner_state) == (action, runner_state)
    if outcome.action == FINISH:
        assert outcome.rc is not None  # never Galaxy's default exit code 0


def _site(tmp_path: Path) -> Path:
    return minimal_site_ini(tmp_path)


def test_missing_everything_is_lost_not_ok(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    outcome = go.job_outcome(cfg, Spool(cfg.spool), "galaxy-1-abc")
    assert (outcome.action, outcome.reason) == (FAIL, Reason.LOST)
    gd.write_description(cfg, "galaxy-1-abc", {"script": "x"})
    assert go.job_outcome(cfg, Spool(cfg.spool), "galaxy-1-abc").action == go.Action.WAIT
    assert not go.untraced(cfg, Spool(cfg.spool), "galaxy-1-abc")


def test_pools(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    assert gb.pool_settings({"walltime": "1h"}) == (gb.DEFAULT_POOL, {})
    with pytest.raises(ConfigError, match="need a 'pool' name"):
        gb.pool_settings({"partition": "gpu"})
    name, overrides = gb.pool_settings({"pool": "big", "partition": "gpu", "slots": "2",
                                        "pilot_walltime": "8h"})
    big = gb.pool_config(cfg, name, overrides)
    assert big.scheduler["partition"] == "gpu" and big.pilot.slots == 2
    assert big.pilot.walltime == 8 * 3600
    assert big.workspace == os.path.join(cfg.workspace, "pools", "big")
    assert big.spool == cfg.spool / "pools" / "big" and big.dropbox.is_dir()


def test_example_job_conf_is_accepted_by_the_runner() -> None:
    """Every runner key of job_conf.example.yml is one the runner declares."""
    conf = yaml.safe_load((PROJECT / "job_conf.example.yml").read_text())
    keys = set(conf["runners"]["hpc"]) - {"load", "workers"}
    install_galaxy()
    out = subprocess.run(
        [str(GALAXY_VENV / "bin" / "python"), "-c",
         "from galaxy_hpc_runner.runner import RUNNER_PARAM_SPECS as S; print(' '.join(S))"],
        env=dict(os.environ, PYTHONPATH=str(PROJECT)), capture_output=True, text=True,
        check=True, timeout=120)
    assert keys <= set(out.stdout.split())
    for env in conf["execution"]["environments"].values():
        if env["runner"] == "hpc":
            gb.pool_settings(env)
