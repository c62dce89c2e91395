"""A real Galaxy server on loopback with our runner in job_conf.yml, and a small API client.

The site (Galaxy's config and data, the hpc-batch config, dropbox, spool and
workspace) lives in one directory; the server is a child process of the test
run and every pilot it starts is ended at teardown (PID 1 reaps nothing here).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# re-exported: the tests and the bench import these from here
from tests.galaxy.api import ADMIN_EMAIL, wait_until
from tests.galaxy.api import TERMINAL as TERMINAL
from tests.galaxy.api import GalaxyApi as GalaxyApi

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
GALAXY_VENV = Path(os.environ.get("GALAXY_VENV", PROJECT / ".galaxy-venv"))
INSTALL = HERE / "install_galaxy.sh"
# Template-mode tools: their <command> never runs; a site template does.
TEMPLATE_TOOLS = ("hpc_shout", "hpc_fail", "hpc_touch", "hpc_wait", "bench_cat_hpc",
                  "ina_speech_segmenter", "whisper", "gentle_forced_alignment")
HPC_TOOLS = TEMPLATE_TOOLS  # the old name (bench)
AMP_WRAPPERS = PROJECT / "tool_wrappers"
FAKE_BIN = HERE / "fakebin"  # a stand-in singularity for the AMP templates
# Ordinary Galaxy tools (tools/ordinary) run in Galaxy-script mode on our runner;
# the site adds copies of each with an id suffix for another environment.
ORDINARY = HERE / "tools" / "ordinary"
COPIES = {"_local": "local", "_tmpl": "hpc_template", "_noembed": "hpc_noembed",
          "_ext": "hpc_ext", "_local_ext": "local_ext"}  # _ext: metadata_strategy extended
# Template-mode copies (copy id -> template tool), each in its own environment of that name.
TEMPLATE_COPIES = {"hpc_shout_ext": "hpc_shout"}
# With an sshd (GalaxySite(ssh=...)): staged placement through a second runner whose site
# reaches its HPC workspace (not under any of Galaxy's directories) over ssh.
STAGED_COPIES = {"_staged": "hpc_staged", "_staged_ext": "hpc_staged_ext"}
STAGED_BENCH = {"bench_cat_staged": "hpc_staged", "bench_cat_staged_inproc": "hpc_staged_inproc"}
GPU_DEVICES = "7,5,3,1"  # CUDA_VISIBLE_DEVICES the local pilots see: slot i gets the i-th

HPC_INI = """\
[dropbox]
path = {hpc}/dropbox
settle = 0

[spool]
path = {hpc}/spool

[templates]
path = {templates}

[hpc_env]
workspace = {hpc}/workspace
scripts = {hpc}/scripts
containers = {hpc}/containers

[scheduler]
backend = local

[submitter]
interval = 0.5
lock_timeout = 30

[pilot]
slots = {slots}
idle_timeout = 30
walltime = 1h
poll = 0.1
heartbeat = 1
grace = 2
"""


_INSTALLED: list[Path] = []  # the venvs the installer accepted in this process
_INSTALL_LOCK = threading.Lock()


def install_galaxy() -> None:
    """Run the idempotent installer once per process (its check alone imports Galaxy, ~9 s);
    any failure fails the tests (never a skip)."""
    with _INSTALL_LOCK:
        if GALAXY_VENV in _INSTALLED:
            return
        proc = subprocess.run([str(INSTALL), str(GALAXY_VENV)], capture_output=True,
                              text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError("installing Galaxy failed (%d):\n%s%s" % (
                proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        _INSTALLED.append(GALAXY_VENV)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def become_subreaper() -> None:
    """Orphaned pilots (their Galaxy gone) become our children, so we can reap them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


class GalaxySite:
    """Config files and directories of one test site; ``start``/``stop`` the server."""

    def __init__(self, root: Path, slots: int = 4,
                 galaxy_overrides: dict[str, Any] | None = None,
                 template_metadata_in_process: bool = True, ssh: Any = None) -> None:
        self.root = root
        self.ssh = ssh  # tests.services.ssh.SshServer: adds the staged environments
        self.copies = dict(COPIES, **(STAGED_COPIES if ssh is not None else {}))
        self.remote = root / "remote"  # the staged site's HPC workspace
        self.hpc = root / "hpc"
        self.gx = root / "galaxy"
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.bootstrap_key = secrets.token_hex(16)
        self.slots = slots
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "galaxy.log"
        self.env: dict[str, str] = {}
        self.galaxy_overrides = dict(galaxy_overrides or {})
        # Template-mode environments may let Galaxy set metadata in-process (fast); the
        # server-wide retry_metadata_internally is false, so that is a per-destination choice.
        self.template_env = {"retry_metadata_internally": True} \
            if template_metadata_in_process else {}

    # -- files -------------------------------------------------------------------------
    def write(self) -> None:
        for sub in ("dropbox", "spool", "workspace", "scripts", "containers", "markers"):
            (self.hpc / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("data", "files", "tmp", "jobs"):
            (self.gx / sub).mkdir(parents=True, exist_ok=True)
        templates = self.root / "templates"  # the project's AMP templates + the test ones
        templates.mkdir(exist_ok=True)
        for source in [*(PROJECT / "templates").glob("*.sh"), *(HERE / "templates").glob("*.sh")]:
            shutil.copyfile(source, templates / source.name)
        (self.hpc / "hpc-batch.ini").write_text(HPC_INI.format(
            hpc=self.hpc, templates=templates, slots=self.slots))
        if self.ssh is not None:
            self.write_ssh_ini(templates)
        (self.gx / "tool_data_table_conf.xml").write_text("<tables/>\n")
        tools = sorted(str(p) for p in (HERE / "tools").glob("*.xml")) + sorted(
            str(p) for p in AMP_WRAPPERS.glob("*.xml") if p.name != "macros.xml")
        tools += [str(p) for p in sorted(ORDINARY.glob("*.xml"))] + self.write_copies()
        (self.gx / "tool_conf.xml").write_text(
            '<toolbox monitor="false">\n<section id="hpc" name="HPC">\n%s</section>\n'
            "</toolbox>\n" % "".join('  <tool file="%s"/>\n' % t for t in tools))
        (self.gx / "job_conf.yml").write_text(yaml.safe_dump(self.job_conf(), sort_keys=False))
        (self.gx / "galaxy.yml").write_text(yaml.safe_dump({"galaxy": self.galaxy_conf()}))

    def write_ssh_ini(self, templates: Path) -> None:
        """The staged site: its own dropbox and spool here, its workspace over ssh."""
        for sub in ("ssh-dropbox", "ssh-spool"):
            (self.hpc / sub).mkdir(exist_ok=True)
        (self.remote / "workspace").mkdir(parents=True, exist_ok=True)
        text = HPC_INI.format(hpc=self.hpc, templates=templates, slots=self.slots).replace(
            "%s/dropbox" % self.hpc, "%s/ssh-dropbox" % self.hpc).replace(
            "%s/spool" % self.hpc, "%s/ssh-spool" % self.hpc).replace(
            "%s/workspace" % self.hpc, "%s/workspace" % self.remote)
        ssh = self.ssh
        text += ("\n[transport]\ntype = ssh\nhost = %s\nport = %s\nuser = %s\nkey_file = %s\n"
                 "known_hosts = %s\ntimeout = 10\n" % (
                     ssh.host, ssh.port, ssh.user, ssh.client_key_path, ssh.known_hosts_path))
        (self.hpc / "hpc-batch-ssh.ini").write_text(text)

    def ordinary_tools(self) -> list[str]:
        return [p.stem for p in sorted(ORDINARY.glob("*.xml"))]

    def write_copies(self) -> list[str]:
        """Each ordinary tool again under ``ID_local`` and ``ID_tmpl``, with its helpers."""
        copies = self.root / "tool_copies"
        copies.mkdir(exist_ok=True)
        for helper in ORDINARY.glob("*.sh"):
            shutil.copyfile(helper, copies / helper.name)
        paths = []
        for tool in sorted(ORDINARY.glob("*.xml")):
            text = tool.read_text()
            for suffix in self.copies:
                path = copies / (tool.stem + suffix + ".xml")
                path.write_text(text.replace('id="%s"' % tool.stem, 'id="%s%s"' % (
                    tool.stem, suffix), 1))
                paths.append(str(path))
        for ident, template in TEMPLATE_COPIES.items():
            source = (HERE / "tools" / (template + ".xml")).read_text()
            (copies / (ident + ".xml")).write_text(source.replace(
                'id="%s"' % template, 'id="%s"' % ident, 1))
            paths.append(str(copies / (ident + ".xml")))
        bench = (HERE / "tools" / "bench_cat_local.xml").read_text()
        bench_ids = ["bench_cat_gx"] + (list(STAGED_BENCH) if self.ssh is not None else [])
        for ident in bench_ids:
            (copies / (ident + ".xml")).write_text(bench.replace(
                'id="bench_cat_local"', 'id="%s"' % ident, 1))
        return [*paths, *(str(copies / (ident + ".xml")) for ident in bench_ids)]

    def job_conf(self) -> dict[str, Any]:
        ordinary = [{"id": tool, "environment": "hpc"} for tool in self.ordinary_tools()] + [
            {"id": tool + suffix, "environment": env} for tool in self.ordinary_tools()
            for suffix, env in self.copies.items()]
        conf: dict[str, Any] = {
            "runners": {
                "local": {"load": "galaxy.jobs.runners.local:LocalJobRunner", "workers": 2},
                "hpc": {"load": "galaxy_hpc_runner.runner:HpcBatchJobRunner", "workers": 2,
                        "config_file": str(self.hpc / "hpc-batch.ini"), "interval": 0.5}},
            "execution": {"default": "local", "environments": {
                "local": {"runner": "local"},
                "local_inproc": {"runner": "local", "embed_metadata_in_job": False},
                "hpc": {"runner": "hpc"},
                "hpc_slots": {"runner": "hpc", "galaxy_slots": 3},
                "hpc_noembed": {"runner": "hpc", "embed_metadata_in_job": False},
                "hpc_template": {"runner": "hpc", "mode": "template", **self.template_env},
                "hpc_bench": {"runner": "hpc", "template": "bench_cat", **self.template_env},
                # metadata_strategy per destination (Galaxy's is directory): both modes
                # with extended metadata, set on the host after a template-mode job
                "hpc_ext": {"runner": "hpc", "metadata_strategy": "extended"},
                "local_ext": {"runner": "local", "metadata_strategy": "extended"},
                **{ident: {"runner": "hpc", "mode": "template", "template": tool,
                           "metadata_strategy": "extended"}
                   for ident, tool in TEMPLATE_COPIES.items()}}},
            "tools": [{"id": tool, "environment": "hpc_bench" if tool.startswith("bench")
                       else "hpc_template"} for tool in TEMPLATE_TOOLS]
            + [{"id": "bench_cat_local", "environment": "local"},
               {"id": "bench_cat_gx", "environment": "hpc"},
               {"id": "bench_cat_local_inproc", "environment": "local_inproc"}]
            + [{"id": ident, "environment": ident} for ident in TEMPLATE_COPIES]
            + [dict(entry, environment="hpc_slots") if entry["id"] == "gx_cpu" else entry
               for entry in ordinary],
        }
        if self.ssh is not None:
            conf["runners"]["hpc_ssh"] = {
                "load": "galaxy_hpc_runner.runner:HpcBatchJobRunner", "workers": 2,
                "config_file": str(self.hpc / "hpc-batch-ssh.ini"), "interval": 0.5}
            conf["execution"]["environments"].update({
                "hpc_staged": {"runner": "hpc_ssh", "placement": "separate"},
                "hpc_staged_ext": {"runner": "hpc_ssh", "placement": "separate",
                                   "metadata_strategy": "extended"},
                "hpc_staged_inproc": {"runner": "hpc_ssh", "placement": "separate",
                                      "retry_metadata_internally": True}})
            conf["tools"] += [{"id": k, "environment": v} for k, v in STAGED_BENCH.items()]
            conf["tools"].append({"id": "gx_where", "environment": "hpc_staged"})
        return conf

    def galaxy_conf(self) -> dict[str, Any]:
        gx = self.gx
        return {
            "data_dir": str(gx / "data"), "file_path": str(gx / "files"),
            "new_file_path": str(gx / "tmp"), "job_working_directory": str(gx / "jobs"),
            "database_connection": "sqlite:///%s?isolation_level=IMMEDIATE" % (gx / "db.sqlite"),
            "database_auto_migrate": True, "tool_config_file": str(gx / "tool_conf.xml"),
            "job_config_file": str(gx / "job_conf.yml"),
            "tool_data_table_config_path": str(gx / "tool_data_table_conf.xml"),
            "conda_auto_init": False, "conda_auto_install": False,
            "enable_mulled_containers": False, "involucro_auto_init": False,
            "metadata_strategy": "directory", "enable_celery_tasks": False,
            "job_runner_monitor_sleep": 0.5, "job_handler_monitor_sleep": 0.5,
            "bootstrap_admin_api_key": self.bootstrap_key, "admin_users": ADMIN_EMAIL,
            "allow_local_account_creation": True, "static_enabled": False,
            "id_secret": secrets.token_hex(16), "cleanup_job": "onsuccess",
            "watch_tools": "false", "allow_path_paste": True,
            "retry_metadata_internally": False,
            **self.galaxy_overrides,
        }

    # -- process -----------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        self.env = dict(os.environ, VIRTUAL_ENV=str(GALAXY_VENV), PYTHONPATH=str(PROJECT),
                        CUDA_VISIBLE_DEVICES=GPU_DEVICES,
                        PATH=os.pathsep.join([str(FAKE_BIN), str(GALAXY_VENV / "bin"),
                                              os.environ.get("PATH", "")]))
        self.env.pop("PYTHONHOME", None)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(GALAXY_VENV / "bin" / "galaxy-web"), "-c", str(self.gx / "galaxy.yml"),
             "-b", "127.0.0.1:%d" % self.port], cwd=str(self.gx), env=self.env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_until(self._ready, timeout, "Galaxy at %s (log %s)" % (self.url, self.log_path), 0.5)

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("Galaxy exited; log %s:\n%s" % (self.log_path, self.log_tail()))
        try:
            with urllib.request.urlopen(self.url + "/api/version", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pilot_pids(self) -> list[int]:
        pids = []
        for path in self.hpc.glob("*spool/**/pilots/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(path.read_text())["scheduler_id"]))
        return pids

    def stop_pilots(self) -> None:
        """End every pilot this site started and reap it (they outlive their Galaxy)."""
        for pid in self.pilot_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in self.pilot_pids():
            while time.monotonic() < deadline and alive(pid):
                _reap(pid)
                time.sleep(0.05)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid)

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Starting:
    """A site whose Galaxy is installed (if missing) and started in a thread, so that other
    work overlaps the install and the start."""

    def __init__(self, site: GalaxySite) -> None:
        self.site = site
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="galaxy-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            install_galaxy()
            self.site.start()
        except BaseException as exc:  # raised again by wait(), in the test that waits
            self.error = exc

    def wait(self) -> GalaxySite:
        """The started site; the start's own error if it failed."""
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("Galaxy at %s was not installed or did not start (log %s)" % (
                self.site.url, self.site.log_path)) from self.error
        return self.site


@contextlib.contextmanager
def starting_site(root: Path, **options: Any) -> Iterator[Starting]:
    """A Galaxy site with our runner, Galaxy installed if missing and the server started in
    the background (``.wait()`` for it); on leaving, the server stopped and the pilots it
    left reaped. ``options`` go to :class:`GalaxySite`."""
    become_subreaper()
    site = GalaxySite(root, **options)
    site.write()
    starting = Starting(site)
    try:
        yield starting
    finally:
        starting.thread.join()
        site.stop()
        site.stop_pilots()


@contextlib.contextmanager
def running_site(root: Path, **options: Any) -> Iterator[GalaxySite]:
    """:func:`starting_site`, waited for: a started Galaxy site with our runner."""
    with starting_site(root, **options) as starting:
        yield starting.wait()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
