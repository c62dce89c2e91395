"""A whole site in a temp directory: dropbox, media, results, HPC workspace, config."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from galaxy_hpc_runner.config import Config, load_config
from galaxy_hpc_runner.dropbox.spool import Spool
from galaxy_hpc_runner.dropbox.submitter import Submitter
from hpc_worker import protocol as p

TEST_TEMPLATES = Path(__file__).resolve().parent / "templates"
PROJECT = Path(__file__).resolve().parent.parent

BASE_CONFIG: dict[str, dict[str, str]] = {
    "dropbox": {"settle": "0"},
    "scheduler": {"backend": "local"},
    "submitter": {"interval": "0.1", "lock_timeout": "30"},
    "pilot": {"slots": "1", "idle_timeout": "3", "walltime": "1h", "poll": "0.05",
              "heartbeat": "0.5", "grace": "2", "max_attempts": "3"},
}


class Site:
    def __init__(self, root: Path, **sections: dict[str, str]) -> None:
        self.root = root
        for sub in ("dropbox", "media", "results", "hpc/workspace", "hpc/scripts",
                    "hpc/containers"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.ledger = root / "ledger.txt"
        self.ledger.touch()
        self.config_path = root / "site.ini"
        self.write_config(**sections)
        self._submitters: list[Submitter] = []

    def write_config(self, **sections: dict[str, str]) -> None:
        merged: dict[str, dict[str, str]] = {
            "dropbox": {"path": str(self.root / "dropbox"),
                        "allowed_input_roots": str(self.root / "media"),
                        "allowed_output_roots": str(self.root / "results")},
            "spool": {"path": str(self.root / "spool")},
            "templates": {"path": str(TEST_TEMPLATES)},
            "hpc_env": {"workspace": str(self.root / "hpc/workspace"),
                        "scripts": str(self.root / "hpc/scripts"),
                        "containers": str(self.root / "hpc/containers"),
                        "ledger": str(self.ledger)},
        }
        for source in (BASE_CONFIG, sections):
            for section, values in source.items():
                merged.setdefault(section, {}).update(values)
        text = "".join("[%s]\n%s\n" % (sec, "".join("%s = %s\n" % kv for kv in vals.items()))
                       for sec, vals in merged.items())
        self.config_path.write_text(text)

    @property
    def cfg(self) -> Config:
        return load_config(self.config_path)

    def key(self, name: str) -> str:
        """The workspace key of job ``name`` (``SERVER=NAME``, protocol.hpc_key)."""
        return p.hpc_key(self.cfg.server_tag, name)

    @property
    def spool(self) -> Spool:
        return Spool(self.cfg.spool)

    def submitter(self) -> Submitter:
        sub = Submitter(self.cfg)
        self._submitters.append(sub)
        return sub

    def media(self, name: str, text: str = "hello world\n") -> Path:
        path = self.root / "media" / name
        path.write_text(text)
        return path

    def out(self, name: str) -> Path:
        return self.root / "results" / name

    def drop(self, name: str, doc: Any = None, text: str | None = None) -> Path:
        path = self.root / "dropbox" / (name + ".job")
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        tmp.rename(path)
        return path

    def upper_job(self, name: str, text: str = "hello world\n") -> dict[str, Any]:
        return {"script": "upper", "input_map": {"input": str(self.media(name + ".txt", text))},
                "output_map": {"output": str(self.out(name + ".upper"))}}

    def sleepy_job(self, name: str, seconds: float, **extra: Any) -> dict[str, Any]:
        doc = {"script": "sleepy", "args": {"seconds": seconds},
               "output_map": {"output": str(self.out(name + ".out"))}}
        doc.update(extra)
        return doc

    def result_path(self, name: str) -> Path:
        return self.root / "dropbox" / (name + ".job.finished")

    def result(self, name: str) -> dict[str, Any]:
        data = yaml.safe_load(self.result_path(name).read_text())
        assert isinstance(data, dict)
        return data

    def ledger_lines(self) -> list[str]:
        """The templates' ledger, with job keys ($HPC_BATCH_JOB: SERVER=NAME) shown as names."""
        prefix = self.key("")
        return [line.replace(prefix, "") for line in self.ledger.read_text().splitlines()]

    def drain(self, names: list[str], timeout: float = 60.0,
              sub: Submitter | None = None) -> Submitter:
        """Run passes until every named job has its result file."""
        sub = sub or self.submitter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sub.run_pass()
            if all(self.result_path(n).exists() for n in names):
                return sub
            time.sleep(0.05)
        missing = [n for n in names if not self.result_path(n).exists()]
        raise AssertionError("no result within %ss for %s" % (timeout, missing[:10]))

    def pass_until(self, predicate: Callable[[], bool], timeout: float = 30.0,
                   sub: Submitter | None = None) -> Submitter:
        sub = sub or self.submitter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sub.run_pass()
            if predicate():
                return sub
            time.sleep(0.05)
        raise AssertionError("condition not reached within %ss" % timeout)

    def state(self, name: str) -> str:
        rec = self.spool.get(name)
        return rec.state if rec else ""

    def pilot_pids(self) -> list[int]:
        assert self.cfg.backend == "local", "pilot ids are process ids only for local"
        return [int(p.scheduler_id) for p in self.spool.pilots() if p.scheduler_id]

    def kill_pilots(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pilot_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.cli_static(*args, timeout=timeout)

    @staticmethod
    def cli_static(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``hpc-batch ARGS`` as a separate process, the way an admin runs it."""
        return subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", *args],
                              capture_output=True, text=True, timeout=timeout, cwd=PROJECT,
                              env=dict(os.environ, PYTHONPATH=str(PROJECT)))

    def close(self) -> None:
        if self.cfg.backend == "local":  # scheduler ids are pids only there
            self.kill_pilots()
        for sub in self._submitters:
            sub.transport.close()


def minimal_site_ini(tmp_path: Path) -> Path:
    """The smallest valid INI: dropbox, spool, templates and workspace under ``tmp_path``."""
    for sub in ("dropbox", "spool", "ws", "templates"):
        (tmp_path / sub).mkdir()
    ini = tmp_path / "site.ini"
    ini.write_text("[dropbox]\npath = %s\n[spool]\npath = %s\n[templates]\npath = %s\n"
                   "[hpc_env]\nworkspace = %s\nscripts = /s\ncontainers = /c\n" % (
                       tmp_path / "dropbox", tmp_path / "spool", tmp_path / "templates",
                       tmp_path / "ws"))
    return ini


def run_together(target: Callable[..., None], calls: list[tuple[Any, ...]]) -> None:
    """``target(*args)`` for each args in its own thread, all at once; the first error of any
    thread is raised again here (``target`` itself may wait on a barrier to start together)."""
    errors: list[BaseException] = []

    def guarded(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # raised again by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=args) for args in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
