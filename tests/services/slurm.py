"""A one-node Slurm 22.05 cluster (munged, slurmctld, slurmd) with fake GPUs.

Everything lives in a private base directory; ports are picked free so that
several clusters (or a system one) can coexist.  Clients find the cluster
through ``SLURM_CONF`` (see :attr:`SlurmCluster.env`).
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ._proc import Daemon, Service, free_port, run, sbin, tail, wait_for

log = logging.getLogger(__name__)

NODE = "localhost"


class SlurmCluster(Service):
    """munged + slurmctld + slurmd in the foreground, as children of this process."""

    def __init__(
        self,
        base_dir: Path | str,
        gpus: int = 2,
        cpus: int = 16,
        extra_conf: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.base_dir = Path(base_dir).resolve()
        self.gpus = gpus
        self.cpus = cpus
        self.extra_conf = dict(extra_conf or {})
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        self._munged = self._daemon("munged", self._munged_argv())
        self._ctld = self._daemon("slurmctld", [sbin("slurmctld"), "-D", "-c"])
        self._slurmd = self._daemon("slurmd", [sbin("slurmd"), "-D", "-N", NODE])

    # -- paths and environment -------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.base_dir / name

    @property
    def conf_path(self) -> Path:
        return self._dir("etc") / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self._dir("run") / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client (sbatch, squeue, ...) needs on top of os.environ."""
        return {"SLURM_CONF": str(self.conf_path)}

    def log_path(self, daemon: str) -> Path:
        """Log file of ``munged``, ``slurmctld`` or ``slurmd``."""
        return self._dir("log") / f"{daemon}.log"

    def _daemon(self, name: str, argv: list[str]) -> Daemon:
        out = self._dir("log") / f"{name}.out"
        return Daemon(name, argv, out, env=self.env, cwd=self.base_dir)

    def _munged_argv(self) -> list[str]:
        run_dir = self._dir("run")
        return [
            sbin("munged"),
            "-F",
            # --force: only warn that pytest's 0700 tmp dirs keep other users off
            # the socket (everything here runs as one user)
            "--force",
            f"--key-file={self._dir('etc') / 'munge.key'}",
            f"--socket={self.munge_socket}",
            f"--pid-file={run_dir / 'munged.pid'}",
            f"--log-file={self.log_path('munged')}",
            f"--seed-file={run_dir / 'munged.seed'}",
        ]

    # -- configuration -----------------------------------------------------------

    def slurm_conf(self) -> dict[str, str]:
        """The slurm.conf keys (``extra_conf`` applied last, overriding)."""
        user = getpass.getuser()
        conf = {
            "ClusterName": "test",
            "SlurmctldHost": NODE,
            "SlurmUser": user,
            "SlurmdUser": user,
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "CredType": "cred/munge",
            "MpiDefault": "none",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "SchedulerType": "sched/backfill",
            "SchedulerParameters": "batch_sched_delay=0,sched_min_interval=0",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "DefMemPerCPU": "100",
            "SlurmdParameters": "config_overrides",
            "ReturnToService": "2",
            "MinJobAge": "300",
            **self._private_conf(),
            "GresTypes": "gpu",
            "NodeName": self._node_line(),
            "PartitionName": "debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        }
        conf.update(self.extra_conf)
        return conf

    def _private_conf(self) -> dict[str, str]:
        """Keys that keep this cluster apart: its own paths and ports."""
        b = self.base_dir
        return {
            "StateSaveLocation": str(b / "state"),
            "SlurmdSpoolDir": str(b / "spool"),
            "SlurmctldPidFile": str(b / "run" / "slurmctld.pid"),
            "SlurmdPidFile": str(b / "run" / "slurmd.pid"),
            "SlurmctldLogFile": str(self.log_path("slurmctld")),
            "SlurmdLogFile": str(self.log_path("slurmd")),
            "SlurmctldPort": str(self.ctld_port),
            "SlurmdPort": str(self.slurmd_port),
        }

    def _node_line(self) -> str:
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        return f"{NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=8000{gres} State=UNKNOWN"

    def _gres_conf(self) -> str:
        lines = ["AutoDetect=off"]
        for i in range(self.gpus):
            # a File= that is a character device: a regular file drains the node
            fake = self._dir("etc") / f"fakegpu{i}"
            if not fake.is_symlink():
                fake.symlink_to("/dev/null")
            lines.append(f"NodeName={NODE} Name=gpu File={fake}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        # unix socket paths (munge, slurmstepd's in the spool dir) must fit in 108 bytes
        step_socket = self._dir("spool") / f"{NODE}_4294967294.4294967294"
        if max(len(str(self.munge_socket)), len(str(step_socket))) > 107:
            raise ValueError(f"base_dir too long for unix socket paths: {self.base_dir}")
        for name in ("etc", "state", "spool", "log"):
            self._dir(name).mkdir(parents=True, exist_ok=True)
        self._dir("run").mkdir(mode=0o755, exist_ok=True)
        self._dir("run").chmod(0o755)  # munged refuses a group/world-writable dir
        key = self._dir("etc") / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        text = "".join(f"{k}={v}\n" for k, v in self.slurm_conf().items())
        self.conf_path.write_text(text)
        (self._dir("etc") / "gres.conf").write_text(self._gres_conf())

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Cold-start the cluster and wait until the node is idle."""
        self._prepare()
        self._launch(self._munged)
        self._wait_daemon(self._munged, self.munge_socket.exists, "munge socket")
        self._ctld.argv = [sbin("slurmctld"), "-D", "-c"]
        self._launch(self._ctld)
        self._launch(self._slurmd)
        self.wait_idle()
        log.info("slurm cluster up: SLURM_CONF=%s", self.conf_path)

    def stop(self) -> None:
        """Cancel leftover jobs (their slurmstepd is no child of ours), then stop."""
        if self._ctld.running and self._slurmd.running:
            self._cancel_all_jobs()
        super().stop()

    def _cancel_all_jobs(self, timeout: float = 15.0) -> None:
        proc = run(["squeue", "-h", "-o", "%i"], env=self.env, check=False)
        jobs = proc.stdout.split()
        if proc.returncode != 0 or not jobs:
            return
        log.info("cancelling leftover slurm jobs %s", jobs)
        run(["scancel", *jobs], env=self.env, check=False)
        try:
            self.wait_idle(timeout)
        except (TimeoutError, RuntimeError):
            log.warning("slurm jobs %s did not end within %.0fs", jobs, timeout)

    def stop_controller(self) -> None:
        """Stop only slurmctld (state is kept), to simulate a controller outage."""
        self._ctld.stop()

    def start_controller(self, timeout: float = 30.0) -> None:
        """Restart slurmctld from its saved state; wait until it answers."""
        self._ctld.argv = [sbin("slurmctld"), "-D"]
        self._launch(self._ctld)
        self._wait_daemon(self._ctld, self._controller_answers, "slurmctld", timeout)

    def _controller_answers(self) -> bool:
        return run(["squeue", "-h"], env=self.env, check=False).returncode == 0

    def node_states(self) -> list[str]:
        """``sinfo`` node states, e.g. ['idle'] or ['mixed']; [] if unreachable."""
        proc = run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every node is idle (registered and running no jobs)."""

        def idle() -> bool:
            for daemon in self._daemons:
                daemon.check_alive()
            states = self.node_states()
            return bool(states) and all(s == "idle" for s in states)

        try:
            wait_for(idle, timeout, "slurm node idle", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; states {self.node_states()}\n{self._logs()}") from exc

    def _wait_daemon(
        self, daemon: Daemon, ready: Callable[[], bool], what: str, timeout: float = 30.0
    ) -> None:
        def check() -> bool:
            daemon.check_alive()
            return bool(ready())

        wait_for(check, timeout, what, interval=0.05)

    def _logs(self) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            for path in (self._dir("log") / f"{name}.out", self.log_path(name)):
                parts.append(f"--- {path} ---\n{tail(path, 15)}")
        return "\n".join(parts)
