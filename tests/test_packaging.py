"""The package as a site gets it: an sdist whose tests run, a wheel built from that sdist,
installed into a fresh venv and used outside any checkout (demo, check)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".galaxy-venv", ".planemo-venv", "build", "dist", "demo-run",
    "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "results")
SHIPPED = ("templates/whisper.sh", "examples/demo/templates/shout.sh", "examples/hpc-batch.ini",
           "examples/ops/crontab", "examples/ops/hpc-batch-submitter.service",
           "examples/ops/hpc-batch-submitter.timer", "tool_wrappers/whisper.xml",
           "job_conf.example.yml")


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (argv, proc.stdout, proc.stderr)
    return proc


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "HPC_BATCH_CONFIG", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist from a copy of the source tree, then the wheel from the unpacked sdist."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    shutil.copytree(PROJECT, src, ignore=NOT_SOURCE, symlinks=True)
    run([sys.executable, "setup.py", "-q", "sdist", "-d", str(root / "dist")], src)
    [sdist] = (root / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "unpacked", filter="data")
    [unpacked] = (root / "unpacked").iterdir()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(root / "wheels"), str(unpacked)], root)
    [wheel] = (root / "wheels").glob("*.whl")
    return {"root": root, "sdist": sdist, "unpacked": unpacked, "wheel": wheel}


def test_the_sdist_is_the_whole_project_and_its_tests_run(built: dict[str, Path]) -> None:
    unpacked = built["unpacked"]
    for rel in SHIPPED + ("LICENSE", "README.md", "tests/sitekit.py",
                          "tests/unit/test_config.py", "scripts/test.sh", "setup.py"):
        assert (unpacked / rel).is_file(), rel
    with tarfile.open(built["sdist"]) as tar:  # a checkout's venvs (bench/.venv-parsl) stay out
        venvs = [n for n in tar.getnames() if "/.venv" in n or n.endswith("/pyvenv.cfg")]
    assert venvs == [], venvs[:5]
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/unit/test_config.py"], unpacked,
               env=clean_env(PYTHONPATH=str(unpacked)))
    assert " passed" in proc.stdout


def test_the_wheel_ships_data_metadata_and_license(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = whl.read(metadata).decode()
    for rel in SHIPPED:
        assert "galaxy_hpc_runner/shipped/" + rel in names, rel
    for script in ("galaxy_job.sh", "galaxy_job_staged.sh"):  # Galaxy-script mode's templates
        assert "galaxy_hpc_runner/galaxy/" + script in names, script
    assert any(n.endswith(".dist-info/LICENSE") for n in names)
    assert "Requires-Dist: paramiko" in meta and "Requires-Python: >=3.10" in meta
    assert "Classifier: License :: OSI Approved :: Apache Software License" in meta
    assert not any(n.startswith(("tests/", "templates/", "examples/")) for n in names)


@pytest.fixture(scope="module")
def venv(built: dict[str, Path]) -> Path:
    """A fresh venv holding only the wheel; its dependencies are borrowed from the running
    interpreter's site-packages by a path entry (no download, and no editable checkout:
    .pth files of a borrowed directory are not run)."""
    target = built["root"] / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(target)], built["root"])
    run([sys.executable, "-m", "pip", "--python", str(target / "bin/python"), "install", "-q",
         "--no-deps", "--no-index", str(built["wheel"])], built["root"])
    site = Path(run([str(target / "bin/python"), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    built["root"]).stdout.strip())
    (site / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return target


def test_the_installed_wheel_runs_the_demo_and_check_outside_any_checkout(
        venv: Path, tmp_path: Path) -> None:
    env = clean_env()
    where = run([str(venv / "bin/python"), "-c", "import galaxy_hpc_runner, hpc_worker; "
                 "print(galaxy_hpc_runner.__file__); print(hpc_worker.__file__)"],
                tmp_path, env).stdout
    assert where.count(str(venv)) == 2, where
    demo = tmp_path / "demo"
    try:
        proc = run([str(venv / "bin/hpc-batch"), "demo", "--dir", str(demo), "--jobs", "3"],
                   tmp_path, env, timeout=120)
        assert "3/3 ok" in proc.stdout
        assert (demo / "results/item002.upper.txt").read_text().startswith("MEDIA ITEM 2")
        text = (demo / "demo.ini").read_text()
        assert str(venv) in text and str(PROJECT) not in text  # the shipped demo templates
        check = run([str(venv / "bin/hpc-batch"), "--config", str(demo / "demo.ini"), "check"],
                    tmp_path, env)
        assert ": OK" in check.stdout
    finally:
        _stop_pilots(demo)
    bare = tmp_path / "bare.ini"
    (tmp_path / "drop").mkdir()
    (tmp_path / "data").mkdir()
    bare.write_text("[dropbox]\npath = drop\nallowed_input_roots = data\n"
                    "allowed_output_roots = data\n[hpc_env]\nworkspace = /ws\nscripts = /s\n"
                    "containers = /c\n")
    check = run([str(venv / "bin/hpc-batch"), "check", "-c", str(bare)], tmp_path, env)
    assert ": OK" in check.stdout
    templates = run([str(venv / "bin/python"), "-c", "from galaxy_hpc_runner.config import "
                     "load_config; print(load_config(%r).templates)" % str(bare)],
                    tmp_path, env).stdout.strip()
    assert templates.startswith(str(venv)) and Path(templates, "whisper.sh").is_file()


def _stop_pilots(demo: Path) -> None:
    """The demo's pilots are local processes; they leave on idle, this is quicker."""
    for record in (demo / "spool/pilots").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(record.read_text())["scheduler_id"]), signal.SIGTERM)


def _installed(venv: Path, rel: str, cwd: Path) -> Path:
    return Path(run([str(venv / "bin/python"), "-c", "from galaxy_hpc_runner.config import "
                     "shipped; print(shipped(%r))" % rel], cwd, clean_env()).stdout.strip())


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_installed_systemd_units_verify(venv: Path, tmp_path: Path) -> None:
    ops = _installed(venv, "examples/ops", tmp_path)
    assert str(ops).startswith(str(venv))
    for unit in ("hpc-batch-submitter.service", "hpc-batch-submitter.timer",
                 "hpc-batch-submitter-loop.service"):
        text = (ops / unit).read_text().replace("/opt/galaxy-hpc-batch/venv", str(venv))
        (tmp_path / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(
        str(p) for p in tmp_path.glob("hpc-batch-*"))], capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_the_shipped_cron_line_runs_a_quiet_pass(venv: Path, tmp_path: Path) -> None:
    """The crontab's command, as cron runs it (in $HOME, config from the environment):
    an idle pass prints nothing, so cron mails nothing."""
    lines = [line for line in (_installed(venv, "examples/ops/crontab", tmp_path)
                               .read_text().splitlines()) if line and line[0] != "#"]
    env_lines = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])
    assert set(env_lines) == {"MAILTO", "HPC_BATCH_CONFIG"}
    [entry] = [line for line in lines if "=" not in line.split()[0]]
    command = entry.split(None, 5)[5].replace("/opt/galaxy-hpc-batch/venv", str(venv))
    for sub in ("drop", "data"):
        (tmp_path / sub).mkdir()
    config = tmp_path / "site.ini"
    config.write_text("[dropbox]\npath = drop\nallowed_input_roots = data\n"
                      "allowed_output_roots = data\n[spool]\npath = spool\n[hpc_env]\n"
                      "workspace = %s\nscripts = /s\ncontainers = /c\n" % (tmp_path / "ws"))
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HPC_BATCH_CONFIG=str(config), HOME=str(home))
    for _ in range(2):  # the first pass lays out the workspace, the second is idle
        proc = subprocess.run(command.split(), cwd=home, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == proc.stderr == "", (proc.stdout, proc.stderr)
