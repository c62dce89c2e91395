"""Parsl's side of bench_throughput.py, run by the Parsl venv's Python (bench/.venv-parsl).

    python parsl_burst.py JOBS STREAM RUN_DIR JOB_SCRIPT_TEXT

HighThroughputExecutor, 2 workers, local provider, warmed up first. Prints one JSON line:
``jobs_per_s`` for JOBS tasks of the job ours runs (``bash job.sh OUT`` with ``stdout=``
and ``stderr=`` files and a new output file each), ``true_jobs_per_s`` for JOBS bare
``true`` tasks (bash_app runs them with ``/bin/sh -c``), and submit -> result of STREAM
tasks of the job, one at a time.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from typing import Any

import parsl  # type: ignore[import-not-found]
from parsl.app.app import bash_app  # type: ignore[import-not-found]
from parsl.config import Config  # type: ignore[import-not-found]
from parsl.executors import HighThroughputExecutor  # type: ignore[import-not-found]
from parsl.providers import LocalProvider  # type: ignore[import-not-found]


@bash_app  # type: ignore[untyped-decorator]
def true_app() -> str:
    return "true"


@bash_app  # type: ignore[untyped-decorator]
def job_app(script: str, out: str, stdout: str | None = None,
            stderr: str | None = None) -> str:  # ours' job: the script, its logs, an output
    return "bash %s %s" % (script, out)


def executor() -> Any:
    provider = LocalProvider(init_blocks=1, max_blocks=1)
    try:
        return HighThroughputExecutor(label="htex", max_workers_per_node=2, provider=provider)
    except TypeError:  # older Parsl
        return HighThroughputExecutor(label="htex", max_workers=2, provider=provider)


def burst(app: Any, count: int, run_dir: str, script: str) -> float:
    """COUNT tasks at once until all are done; tasks per second."""
    started = time.monotonic()
    if app is job_app:  # new files, as each of ours' jobs makes
        base = tempfile.mkdtemp(dir=run_dir)
        futures = [job_app(script, "%s/%d.out" % (base, i), stdout="%s/%d.o" % (base, i),
                           stderr="%s/%d.e" % (base, i)) for i in range(count)]
    else:
        futures = [true_app() for _ in range(count)]
    for future in futures:
        future.result()
    return count / (time.monotonic() - started)


def main() -> None:
    jobs, stream, run_dir, job_text = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    parsl.load(Config(executors=[executor()], run_dir=run_dir, usage_tracking=0))
    script = run_dir + "/job.sh"
    with open(script, "w") as handle:
        handle.write(job_text)
    for app in (true_app, job_app):  # warm: workers up, each app through them
        burst(app, 200, run_dir, script)
    rate = burst(job_app, jobs, run_dir, script)
    rate_true = burst(true_app, jobs, run_dir, script)
    lat = []
    for i in range(stream):
        started = time.monotonic()
        job_app(script, "%s/s%d.out" % (run_dir, i), stdout="%s/s%d.o" % (run_dir, i),
                stderr="%s/s%d.e" % (run_dir, i)).result()
        lat.append(time.monotonic() - started)
    parsl.dfk().cleanup()
    print(json.dumps({"jobs_per_s": rate, "true_jobs_per_s": rate_true,
                      "version": parsl.__version__,
                      "dispatch_p50_s": statistics.median(lat) if lat else None,
                      "dispatch_p95_s": statistics.quantiles(lat, n=20)[18] if len(lat) > 1
                      else (lat[0] if lat else None)}), flush=True)


if __name__ == "__main__":
    main()
