"""`hpc-batch check` offline: every problem with file and line, the right hint, no cwd games."""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
import pytest

from galaxy_hpc_runner import config_checks
from galaxy_hpc_runner.config import (
    default_spool,
    load_config,
    parse_duration,
    read_config,
    shipped,
)
from galaxy_hpc_runner.config_checks import gres_gpus

SITE = """\
[dropbox]
path = dropbox
allowed_input_roots = media
allowed_output_roots = results

[hpc_env]
workspace = /ws
scripts = /s
containers = /c
"""


def write(root: Path, extra: str = "", base: str = SITE) -> Path:
    for sub in ("dropbox", "media", "results"):
        (root / sub).mkdir(exist_ok=True)
    path = root / "site.ini"
    path.write_text(base + extra)
    return path


def problems(path: Path) -> list[str]:
    return read_config(path)[1]


def test_a_valid_site_has_no_problem_and_relative_paths_follow_the_ini_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # cron runs in $HOME
    cfg, errors = read_config(path)
    assert errors == []
    assert cfg.dropbox == tmp_path / "dropbox"
    assert cfg.allowed_input_roots == [tmp_path / "media"]
    assert cfg.spool == default_spool(tmp_path / "dropbox")
    assert not cfg.spool.is_relative_to(tmp_path / "dropbox")  # a job may write there
    assert cfg.metrics_file == cfg.spool / "metrics.prom"


def test_every_problem_names_file_and_line_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "[pilot]\npartition = gpu\nidle_timout = 5\nwalltime = 2hours\n"
                           "[sheduler]\nbackend = local\n")
    errors = problems(path)
    lines = SITE.count("\n")
    assert errors == [
        "%s:%d: [pilot] unknown key 'partition': it belongs in [scheduler]" % (path, lines + 2),
        "%s:%d: [pilot] unknown key 'idle_timout': did you mean 'idle_timeout'?" % (
            path, lines + 3),
        "%s:%d: [pilot] walltime = '2hours' is not a valid duration (use seconds, 15m, 2h or "
        "D-HH:MM:SS)" % (path, lines + 4),
        "%s:%d: unknown section [sheduler]: did you mean [scheduler]?" % (path, lines + 5),
    ]


def test_scheduler_time_is_gone_one_walltime_feeds_both(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\nbackend = slurm\ntime = 1\n")
    [error] = problems(path)
    assert "[scheduler] time is gone" in error and "[pilot] walltime" in error


def test_a_warning_signal_longer_than_the_walltime_fails(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\nbackend = slurm\nsignal = B:USR1@600\n"
                           "[pilot]\nwalltime = 5m\nidle_timeout = 1m\n")
    [error] = problems(path)
    assert ":%d: [scheduler] signal = B:USR1@600 warns 600s before the end" % (
        SITE.count("\n") + 3) in error
    ok = write(tmp_path, "[scheduler]\nbackend = slurm\nsignal = B:USR1@60\n"
                         "[pilot]\nwalltime = 5m\nidle_timeout = 1m\n")
    assert problems(ok) == []
    bad = write(tmp_path, "[scheduler]\nbackend = slurm\nsignal = USR1 at 60\n")
    assert "is not Slurm's [B:]SIGNAL[@SECONDS] form" in problems(bad)[0]


def test_a_grid_engine_h_rt_shorter_than_the_walltime_is_warned_of(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\nbackend = drmaa\nnative_spec = -l h_rt=0:30:00,gpu=1\n"
                           "[pilot]\nwalltime = 1h\nidle_timeout = 1m\n")
    [warning] = config_checks.warnings(load_config(path))
    assert "h_rt = 1800s, less than [pilot] walltime = 3600s" in warning
    fits = write(tmp_path, "[scheduler]\nbackend = drmaa\nnative_spec = -q gpu -l h_rt=3600\n"
                           "[pilot]\nwalltime = 1h\nidle_timeout = 1m\n")
    assert config_checks.warnings(load_config(fits)) == []


def test_more_slots_than_gpus_fails_unless_slots_share_gpus(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\nbackend = slurm\ngres = gpu:v100:2\n[pilot]\nslots = 4\n")
    [error] = problems(path)
    assert "[pilot] slots = 4 but the pilot asks for 2 GPU(s)" in error
    assert "slots_per_gpu" in error
    shared = write(tmp_path, "[scheduler]\nbackend = slurm\ngres = gpu:v100:2\n"
                             "[pilot]\nslots = 4\nslots_per_gpu = 2\n")
    assert problems(shared) == []
    cpu_only = write(tmp_path, "[scheduler]\nbackend = slurm\n[pilot]\nslots = 4\n")
    assert problems(cpu_only) == []


def test_gres_counts_every_spelling() -> None:
    class Cfg:
        def __init__(self, **scheduler: str) -> None:
            self.scheduler = scheduler

    assert gres_gpus(Cfg(gres="gpu:1")) == 1  # type: ignore[arg-type]
    assert gres_gpus(Cfg(gres="gpu:a100:3,shard:2")) == 3  # type: ignore[arg-type]
    assert gres_gpus(Cfg(gres="gpu")) == 1  # type: ignore[arg-type]
    assert gres_gpus(Cfg(native_spec="--gres=gres:gpu:2 --mem=100")) == 2  # type: ignore[arg-type]
    assert gres_gpus(Cfg(extra_args="--exclusive --gres=gpu:4")) == 4  # type: ignore[arg-type]
    assert gres_gpus(Cfg(gres="")) is None  # type: ignore[arg-type]


def test_keys_of_another_backend_or_transport_are_flagged(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\nbackend = slurm\nnative_spec = -l gpu=1\n"
                           "[transport]\nhost = login\n")
    errors = problems(path)
    assert len(errors) == 2
    assert "[scheduler] native_spec is a drmaa setting: it has no effect with backend = slurm" \
        in errors[0]
    assert "[transport] host is an ssh setting: it has no effect with type = local" in errors[1]


def test_bad_command_timeout_and_port_fail_check_and_good_ones_are_normalised(
        tmp_path: Path) -> None:
    bad = write(tmp_path, "[scheduler]\ncommand_timeout = soon\n"
                          "[transport]\ntype = ssh\nhost = h\nport = 70000\n")
    text = "\n".join(problems(bad))
    assert "[scheduler] command_timeout = 'soon' is not a valid duration" in text
    assert "[transport] port = 70000 is not a TCP port (1-65535)" in text
    hosts = tmp_path / "known_hosts"
    _known_hosts(hosts, "[h]:2222")
    good = write(tmp_path, "[scheduler]\ncommand_timeout = 2m\n[transport]\ntype = ssh\n"
                           "host = h\nport = 2222\ntimeout = 1m\nknown_hosts = known_hosts\n")
    cfg, errors = read_config(good)
    assert errors == []
    assert cfg.scheduler["command_timeout"] == "120" and cfg.transport["timeout"] == "60"
    assert cfg.transport["known_hosts"] == str(hosts)  # relative to the INI


def _known_hosts(path: Path, name: str) -> None:
    hk = paramiko.HostKeys()
    hk.add(name, "ssh-rsa", paramiko.RSAKey.generate(1024))
    hk.save(str(path))


def test_ssh_files_are_checked_offline(tmp_path: Path) -> None:
    _known_hosts(tmp_path / "known_hosts", "other.example")
    path = write(tmp_path, "[transport]\ntype = ssh\nhost = login.example\n"
                           "key_file = keys/id_missing\nknown_hosts = known_hosts\n")
    errors = problems(path)
    assert "[transport] key_file = %s does not exist or is not a file" % (
        tmp_path / "keys/id_missing") in errors[0]
    assert "has no key for login.example: connections would be refused" in errors[1]
    missing = write(tmp_path, "[transport]\ntype = ssh\nhost = h\nknown_hosts = nowhere\n")
    assert "[transport] known_hosts = %s does not exist" % (tmp_path / "nowhere") \
        in problems(missing)[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_key_file_fails_offline(tmp_path: Path) -> None:
    _known_hosts(tmp_path / "known_hosts", "h")
    (tmp_path / "id").write_text("secret")
    (tmp_path / "id").chmod(0)
    path = write(tmp_path, "[transport]\ntype = ssh\nhost = h\nkey_file = id\n"
                           "known_hosts = known_hosts\n")
    assert "[transport] key_file = %s is not readable" % (tmp_path / "id") in problems(path)[0]


def test_durations_must_be_finite() -> None:
    for bad in ("nan", "inf", "-5", "2hours"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_duration("1-02:00:00") == 93600


def test_the_default_templates_are_the_shipped_ones(tmp_path: Path) -> None:
    cfg, errors = read_config(write(tmp_path))
    assert errors == [] and cfg.templates == shipped("templates")
    assert (shipped("examples/demo/templates") / "shout.sh").is_file()
    assert shipped("job_conf.example.yml").is_file()
    assert shipped("tool_wrappers").is_dir()
