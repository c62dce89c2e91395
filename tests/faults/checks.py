"""What holds after every repetition, whatever the fault.

For every job: exactly one result, ok, outputs exact (the input and its checksum, which
the tool checked before it worked), the spool's journal finished it at most once, its
tool ran to its end once. For the site: at most ``max_pilots`` pilots queued or running
at once, every Slurm pilot known to ``hpc-batch status``, no tool process of a dead
attempt alive after its pilot.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field

from hpc_worker.states import JobState
from tests.faults.bench import Rep
from tests.unit.pilotkit import pids_with_environ

ORPHAN_BOUND = 10.0  # seconds a dead attempt's processes may take to go after its pilot


@dataclass
class Tally:
    jobs: int = 0
    runs: int = 0
    ok: int = 0
    lost: int = 0
    duplicated: int = 0
    orphans: int = 0
    pilots_max: int = 0
    unknown_pilots: int = 0
    problems: list[str] = field(default_factory=list)


def attempt_pids(key: str, attempt: str | None = None) -> list[int]:
    """Live processes of job ``key`` (of one attempt when given), from their environment."""
    pids = set(pids_with_environ("HPC_BATCH_JOB=" + key))
    if attempt is not None:
        pids &= set(pids_with_environ("HPC_BATCH_ATTEMPT=" + attempt))
    return sorted(pids)


def orphans_after(keys: list[tuple[str, str | None]], bound: float = ORPHAN_BOUND) -> list[int]:
    """Processes of these (key, attempt) pairs still alive ``bound`` seconds from now
    (they are killed then, so one repetition's leftovers cannot spoil the next)."""
    deadline = time.monotonic() + bound
    alive: list[int] = []
    while True:
        alive = sorted({pid for key, attempt in keys for pid in attempt_pids(key, attempt)})
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def check_jobs(rep: Rep, tally: Tally) -> None:
    ledger = rep.ledger()
    tally.jobs += len(rep.jobs)
    tally.runs += sum(1 for event, _, _ in ledger if event == "start")
    for name, expected in sorted(rep.jobs.items()):
        ends = [a for event, job, a in ledger if job == name and event == "end"]
        bad = [a for event, job, a in ledger if job == name and event == "badinput"]
        finished = [e for e in rep.site.spool.history(name) if e["to"] == JobState.FINISHED]
        why = _job_problem(rep, name, expected, len(ends), len(finished))
        if bad:
            why = why or "input checksum wrong in %s" % ", ".join(bad)
        if len(ends) > 1:
            tally.duplicated += 1
            tally.problems.append("%s: its tool ran to its end %d times (%s)" % (
                name, len(ends), ", ".join(ends)))
        if why:
            tally.lost += 1
            tally.problems.append("%s: %s" % (name, why))
        else:
            tally.ok += 1


def _job_problem(rep: Rep, name: str, expected: str, ends: int, finished: int) -> str:
    if not rep.site.result_path(name).exists():
        return "no result (state %s)" % rep.site.state(name)
    job = rep.site.result(name)["job"]
    if job.get("status") != "ok":
        return "result %s: %s" % (job.get("status"), job.get("message"))
    out = rep.site.out(name + ".out")
    if not out.exists() or out.read_text() != expected:
        return "output %s missing or not exact" % out
    if finished > 1:  # (a kill between a record and its journal line may leave none)
        return "finished %d times in the spool's journal" % finished
    if ends == 0:
        return "ok, but its tool never reached its end"
    return ""


def check_pilots(rep: Rep, tally: Tally) -> None:
    """Slurm's pilots of this repetition against ``max_pilots`` and ``status --json``."""
    tally.pilots_max = max(tally.pilots_max, rep.pilots_max)
    limit = rep.site.cfg.max_pilots
    if rep.pilots_max > limit:
        tally.problems.append("%d pilots at once (max_pilots = %d)" % (rep.pilots_max, limit))
    proc = rep.site.cli("status", "--json", "--config", str(rep.site.config_path))
    try:
        known = json.loads(proc.stdout)["pilots"]
    except (ValueError, KeyError) as exc:
        tally.problems.append("status --json unreadable (%s): %s" % (exc, proc.stderr[-300:]))
        return
    ids = {pilot.get("scheduler_id") for pilot in known} | {pilot.get("pilot_id")
                                                            for pilot in known}
    for sid, name in rep.slurm_pilots("all"):
        if sid not in ids and name not in ids:
            tally.unknown_pilots += 1
            tally.problems.append("Slurm job %s (%s) unknown to status" % (sid, name))


def check_leftovers(rep: Rep, tally: Tally) -> None:
    """After every pilot is gone: no process of any job of this repetition."""
    left = orphans_after([(rep.site.key(name), None) for name in rep.jobs])
    if left:
        tally.orphans += len(left)
        tally.problems.append("%d tool process(es) alive after every pilot ended" % len(left))
