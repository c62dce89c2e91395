"""Galaxy-side cost of our runner, measured in a real Galaxy 26.1 server on loopback.

1. Overhead per job (submit through the API -> ok) of one trivial tool
   (``cat input > output``) on Galaxy's local runner and on ours in both modes
   (Galaxy-script mode: Galaxy's own job script with metadata in it; template
   mode: a site template, metadata set on the Galaxy host), all run side by side
   in one server: sequential jobs, then a burst. With ``--staged`` (the default)
   also Galaxy-script mode staged over a real sshd (``placement: separate``, a
   second runner; metadata on the Galaxy host: Galaxy's external script, or in
   Galaxy's process with ``retry_metadata_internally: true``).
2. State delay: the time from the pilot reporting a state (its claim marker,
   its done marker in the HPC workspace) to Galaxy's API showing it (target <= 2 s).

    .venv/bin/python bench/bench_galaxy.py [--jobs 10] [--burst 20] [--delays 5] [--no-staged]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxy_hpc_runner.config import load_config
from hpc_worker import protocol as p
from tests.galaxy.server import (
    GalaxyApi,
    GalaxySite,
    become_subreaper,
    install_galaxy,
    wait_until,
)
from tests.services.ssh import SshServer

STAGED = ("bench_cat_staged", "bench_cat_staged_inproc")


def timed(func: Callable[[], object]) -> float:
    start = time.monotonic()
    func()
    return time.monotonic() - start


def sequential(api: GalaxyApi, history: str, tool: str, dataset: str, jobs: int) -> list[float]:
    def one() -> None:
        job, _ = api.run_tool(history, tool, {"input": {"src": "hda", "id": dataset}})
        assert api.wait_job(job, 120)["state"] == "ok"
    return [timed(one) for _ in range(jobs)]


def burst(api: GalaxyApi, history: str, tool: str, dataset: str, jobs: int) -> float:
    def run() -> None:
        ids = [api.run_tool(history, tool, {"input": {"src": "hda", "id": dataset}})[0]
               for _ in range(jobs)]
        assert all(api.wait_job(job, 300)["state"] == "ok" for job in ids)
    return timed(run)


def first_time(predicate: Callable[[], bool], timeout: float = 60.0) -> float:
    wait_until(predicate, timeout, "a state", interval=0.01)
    return time.monotonic()


def state_delays(site: GalaxySite, api: GalaxyApi, history: str, work: Path) -> tuple[float, float]:
    """(claimed -> Galaxy running, done -> Galaxy ok) in seconds, for one job."""
    release = work / ("release-%d" % time.monotonic_ns())
    job, _ = api.run_tool(history, "hpc_wait", {"release": str(release), "label": "d"})
    name = str(wait_until(lambda: api.job(job).get("external_id"), 30, "external id"))
    key = p.hpc_key(load_config(site.hpc / "hpc-batch.ini").server_tag, name)  # SERVER=NAME
    queue = site.hpc / "workspace" / "queue"
    claimed = first_time(lambda: any(queue.joinpath("claimed").glob(key + "@*")))
    running = first_time(lambda: api.job_state(job) == "running")
    release.touch()
    done = first_time(lambda: queue.joinpath("done", key).exists()
                      or not (site.hpc / "workspace" / "jobs" / key).exists())
    ok = first_time(lambda: api.job_state(job) == "ok")
    return running - claimed, ok - done


def summary(values: list[float]) -> str:
    return "mean %.2fs  median %.2fs  min %.2fs  max %.2fs" % (
        statistics.mean(values), statistics.median(values), min(values), max(values))


def run(args: argparse.Namespace, root: Path) -> None:
    with contextlib.ExitStack() as stack:
        ssh = stack.enter_context(SshServer(root / "sshd")) if args.staged else None
        site = GalaxySite(root / "site", ssh=ssh)
        site.write()
        site.start()
        try:
            api = GalaxyApi.for_new_user(site)
            history = api.history("bench")
            seq, bursts = measure(args, api, history)
            report(args, seq, bursts)  # printed before the state delays are measured
            delays = [state_delays(site, api, history, root) for _ in range(args.delays)]
        finally:
            site.stop()
            site.stop_pilots()
    print("state delay, pilot -> Galaxy API, %d jobs:" % args.delays)
    print("  claimed -> running : %s" % summary([r for r, _ in delays]))
    print("  done    -> ok      : %s" % summary([o for _, o in delays]))


def measure(args: argparse.Namespace, api: GalaxyApi, history: str
            ) -> tuple[dict[str, list[float]], dict[str, float]]:
    dataset = api.upload(history, "benchmark input\n" * 10)
    tools = ["bench_cat_local", "bench_cat_local_inproc", "bench_cat_hpc", "bench_cat_gx"]
    tools += list(STAGED) if args.staged else []
    for tool in tools:
        sequential(api, history, tool, dataset, 1)  # warm up (and start the pilots)
    seq = {tool: sequential(api, history, tool, dataset, args.jobs) for tool in tools}
    bursts = {tool: burst(api, history, tool, dataset, args.burst)
              for tool in tools if tool != "bench_cat_local_inproc"}
    return seq, bursts


LABELS = {
    "bench_cat_local": "local runner (metadata in the job script, the default)",
    "bench_cat_local_inproc": "local runner (embed_metadata_in_job: false)",
    "bench_cat_hpc": "hpc runner, template mode (metadata in Galaxy's process)",
    "bench_cat_gx": "hpc runner, Galaxy-script mode, shared (metadata in the job)",
    "bench_cat_staged": "hpc runner, Galaxy-script, staged over ssh (metadata: external script)",
    "bench_cat_staged_inproc": "hpc runner, Galaxy-script, staged over ssh (metadata in-process)",
}


def report(args: argparse.Namespace, seq: dict[str, list[float]],
           bursts: dict[str, float]) -> None:
    print("Galaxy 26.1.2, galaxy-web on loopback, SQLite, job_runner_monitor_sleep 0.5 s, "
          "batcher interval 0.5 s, local backend (pilot kept warm)")
    local = statistics.mean(seq["bench_cat_local"])
    print("sequential, %d jobs each (submit -> ok):" % args.jobs)
    for tool, values in seq.items():
        print("  %-78s: %s  (x%.2f local)" % (LABELS[tool], summary(values),
                                               statistics.mean(values) / local))
    print("burst of %d submitted at once, until all ok:" % args.burst)
    for tool, total in bursts.items():
        print("  %-78s: %.2fs (%.2fs/job, x%.2f local)" % (
            LABELS[tool], total, total / args.burst, total / bursts["bench_cat_local"]))
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10, help="sequential jobs per runner")
    ap.add_argument("--burst", type=int, default=20, help="jobs submitted at once per runner")
    ap.add_argument("--delays", type=int, default=5, help="jobs for the state delay")
    ap.add_argument("--no-staged", dest="staged", action="store_false",
                    help="leave out the staged placement (no sshd)")
    args = ap.parse_args()
    install_galaxy()
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="bench-galaxy-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
