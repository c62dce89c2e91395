"""A one-host Grid Engine 8.1.9 (sge_qmaster + sge_execd) with its DRMAA library.

Grid Engine is the one real DRM with a packaged DRMAA 1.0 library here (there
is none for Slurm), so DRMAA code is tested against it.  Its state is global:
SGE_ROOT=/var/lib/gridengine, cell ``default``, spool under
/var/spool/gridengine, so only one GridEngine may run per machine.  Ports are
picked free and handed to clients through :attr:`GridEngine.env`.

The daemons normally daemonize themselves; with ``SGE_ND=1`` they stay in the
foreground, which makes them plain children of this process.

A Python process that imports ``drmaa`` must *start* with :attr:`GridEngine.env`
in its environment: ``GLIBC_TUNABLES`` cannot take effect after start-up, and
without it ``import drmaa`` fails with "libjemalloc.so.2: cannot allocate
memory in static TLS block".  Run DRMAA code in a subprocess started with that
environment.  DRMAA jobs default their output to $HOME; set ``outputPath``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

from ._proc import Daemon, Service, free_port, is_alive, run, tail, wait_for

log = logging.getLogger(__name__)

SGE_ROOT = Path("/var/lib/gridengine")
SGE_CELL = "default"
DRMAA_LIBRARY_PATH = "/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0"
GLIBC_TUNABLES = "glibc.rtld.optional_static_tls=4096000"
QUEUE = "all.q"
SLOTS = 8
QMASTER_STOP_TIMEOUT = 40.0  # a graceful qmaster shutdown takes about 9-12 s

_QUEUE_KEYS = """qtype BATCH INTERACTIVE
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
ckpt_list NONE
pe_list NONE
rerun FALSE
tmpdir /tmp
shell /bin/sh
prolog NONE
epilog NONE
shell_start_mode posix_compliant
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
"""
_LIMITS = ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem")


class GridEngine(Service):
    """sge_qmaster + sge_execd in the foreground, with queue all.q (8 slots)."""

    def __init__(self, base_dir: Path | str) -> None:
        super().__init__()
        self.base_dir = Path(base_dir).resolve()
        self.hostname = socket.gethostname()
        self.qmaster_port = free_port()
        self.execd_port = free_port()
        daemon_env = {**self.env, "SGE_ND": "1"}
        self._qmaster = Daemon(
            "sge_qmaster",
            ["/usr/sbin/sge_qmaster"],
            self._log("sge_qmaster"),
            env=daemon_env,
            cwd=self.base_dir,
        )
        self._execd = Daemon(
            "sge_execd",
            ["/usr/sbin/sge_execd"],
            self._log("sge_execd"),
            env=daemon_env,
            cwd=self.base_dir,
        )

    @property
    def env(self) -> dict[str, str]:
        """Client environment (qsub, qstat, python drmaa); see the module doc."""
        return {
            "SGE_ROOT": str(SGE_ROOT),
            "SGE_CELL": SGE_CELL,
            "SGE_QMASTER_PORT": str(self.qmaster_port),
            "SGE_EXECD_PORT": str(self.execd_port),
            "DRMAA_LIBRARY_PATH": DRMAA_LIBRARY_PATH,
            "GLIBC_TUNABLES": GLIBC_TUNABLES,
        }

    def _log(self, name: str) -> Path:
        return self.base_dir / "log" / f"{name}.out"

    def qconf(self, *args: str, check: bool = True) -> str:
        """Run ``qconf ARGS`` against this cell; return stdout+stderr."""
        proc = run(["qconf", *args], env=self.env, check=check)
        return proc.stdout + proc.stderr

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start qmaster, configure the cell, start execd, wait for the queue."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "conf").mkdir(exist_ok=True)
        self._refuse_running_qmaster()
        self._prepare_cell()
        self._launch(self._qmaster)
        self._wait(self._qmaster, self._qmaster_answers, "sge_qmaster")
        self._configure()
        self._cancel_all_jobs()
        self._launch(self._execd)
        self._wait(self._execd, self._queue_ready, f"queue {QUEUE} ready")
        log.info("grid engine up: qmaster port %d", self.qmaster_port)

    def stop(self) -> None:
        """Delete leftover jobs, stop execd (and job shepherds), then qmaster."""
        if self._qmaster.running:
            self._cancel_all_jobs()
        self._execd.stop(kill_children=True)
        self._qmaster.stop(timeout=QMASTER_STOP_TIMEOUT)
        super().stop()

    def _refuse_running_qmaster(self) -> None:
        pid_file = Path(_bootstrap("qmaster_spool_dir")) / "qmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        comm = Path(f"/proc/{pid}/comm")
        if is_alive(pid) and comm.exists() and comm.read_text().strip() == "sge_qmaster":
            raise RuntimeError(f"an sge_qmaster (pid {pid}) already runs; one per machine")

    def _prepare_cell(self) -> None:
        common = SGE_ROOT / SGE_CELL / "common"
        # without the alias: "access denied ... not identical to clients host name"
        (common / "host_aliases").write_text(f"{self.hostname} localhost\n")
        # install.sh recorded the install-time hostname; follow a renamed host
        (common / "act_qmaster").write_text(f"{self.hostname}\n")
        run_dir = Path("/var/run/gridengine")
        run_dir.mkdir(exist_ok=True)
        run(["chown", "sgeadmin:sgeadmin", str(run_dir)])

    def _wait(
        self, daemon: Daemon, ready: Callable[[], bool], what: str, timeout: float = 30.0
    ) -> None:
        def check() -> bool:
            daemon.check_alive()
            return ready()

        try:
            wait_for(check, timeout, what, interval=0.1)
        except (TimeoutError, RuntimeError) as exc:
            raise type(exc)(f"{exc}\n{tail(daemon.log_path)}\n{self._messages()}") from exc

    def _messages(self) -> str:
        path = Path(_bootstrap("qmaster_spool_dir")) / "messages"
        return f"--- {path} ---\n{tail(path, 10)}"

    def _qmaster_answers(self) -> bool:
        return run(["qstat"], env=self.env, check=False).returncode == 0

    def queue_states(self) -> str | None:
        """State letters of the queue instance ('' when fine), None if not listed."""
        out = run(["qstat", "-f", "-q", QUEUE], env=self.env, check=False).stdout
        for line in out.splitlines():
            if line.startswith(f"{QUEUE}@"):
                fields = line.split()
                return fields[5] if len(fields) > 5 else ""
        return None

    def _queue_ready(self) -> bool:
        states = self.queue_states()
        if states and "E" in states:
            run(["qmod", "-c", QUEUE], env=self.env, check=False)
        if states and "d" in states:
            run(["qmod", "-e", QUEUE], env=self.env, check=False)
        return states == ""

    # -- configuration ----------------------------------------------------------------

    def _configure(self) -> None:
        conf = self.base_dir / "conf"
        # root jobs need min_uid/min_gid 0, set before sge_execd starts
        self._modify(
            conf / "global",
            self.qconf("-sconf", "global"),
            {"min_uid": "0", "min_gid": "0"},
            "-Mconf",
        )
        sched = {"schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1"}
        self._modify(conf / "sched", self.qconf("-ssconf"), sched, "-Msconf")
        self.qconf("-ah", self.hostname, check=False)  # "already exists" is fine
        self.qconf("-as", self.hostname, check=False)
        self._add_or_modify(conf / "exechost", self._exechost_text(), "-Ae", "-Me")
        self._add_or_modify(conf / "queue", self._queue_text(), "-Aq", "-Mq")

    def _modify(self, path: Path, current: str, changes: dict[str, str], flag: str) -> None:
        lines = []
        for line in current.splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            lines.append(f"{key} {changes[key]}" if key in changes else line)
        path.write_text("\n".join(lines) + "\n")
        self.qconf(flag, str(path))

    def _add_or_modify(self, path: Path, text: str, add: str, modify: str) -> None:
        path.write_text(text)
        if "already exists" in self.qconf(add, str(path), check=False):
            self.qconf(modify, str(path))

    def _exechost_text(self) -> str:
        keys = [
            "load_scaling",
            "complex_values",
            "user_lists",
            "xuser_lists",
            "projects",
            "xprojects",
            "usage_scaling",
            "report_variables",
        ]
        return f"hostname {self.hostname}\n" + "".join(f"{k} NONE\n" for k in keys)

    def _queue_text(self) -> str:
        limits = "".join(f"{p}_{lim} INFINITY\n" for lim in _LIMITS for p in "sh")
        head = f"qname {QUEUE}\nhostlist {self.hostname}\nslots {SLOTS}\n"
        return head + _QUEUE_KEYS + limits

    def _cancel_all_jobs(self) -> None:
        out = run(["qstat", "-u", "*"], env=self.env, check=False).stdout
        jobs = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
        if jobs:
            log.info("deleting leftover grid engine jobs %s", jobs)
            run(["qdel", "-f", *jobs], env=self.env, check=False)


def _bootstrap(key: str) -> str:
    """A value from the cell's bootstrap file (e.g. qmaster_spool_dir)."""
    for line in (SGE_ROOT / SGE_CELL / "common" / "bootstrap").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return parts[1]
    raise KeyError(f"{key} not in Grid Engine bootstrap")
