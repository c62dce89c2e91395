"""``hpc-worker`` / ``python3 -m hpc_worker``: run one pilot."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import protocol as p
from .pilot import Pilot, PilotSettings
from .records import PROTOCOL_VERSION


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="hpc-worker", description=__doc__)
    ap.add_argument("--workspace", required=True, help="the HPC workspace root")
    ap.add_argument("--pilot-id", required=True, help="unique name given by the submitter")
    ap.add_argument("--version", action="version",
                    version="hpc-worker, protocol version %d" % PROTOCOL_VERSION)
    ap.add_argument("--slots", type=int, default=1,
                    help="jobs run at once, one GPU each (see --slots-per-gpu)")
    ap.add_argument("--slots-per-gpu", type=int, default=1,
                    help="slots sharing one allocated GPU; slots beyond GPUs x this are "
                         "not started (no effect where no GPU variable is set)")
    ap.add_argument("--gpu-sample", type=float, default=10.0,
                    help="seconds between nvidia-smi samples for GPU accounting (0: none)")
    ap.add_argument("--settle", type=float, default=0.2,
                    help="seconds a job that ended by itself waits before it is reported, "
                         "so a stop signal sent to it and the pilot at once releases it")
    ap.add_argument("--keep-env", action="append", default=[], metavar="NAME",
                    help="also pass this variable (NAME, or PREFIX*) of the pilot's "
                         "environment to jobs; repeatable")
    ap.add_argument("--idle-timeout", type=float, default=300.0,
                    help="stop after this many seconds with nothing to do")
    ap.add_argument("--walltime", type=float, default=None,
                    help="seconds this pilot may run; longer jobs are left for the next one")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between queue scans")
    ap.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    ap.add_argument("--grace", type=float, default=10.0,
                    help="seconds between SIGTERM and SIGKILL when a job is stopped")
    ap.add_argument("--log", default=None, help="log file (default W/pilots/PILOT.log)")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not p.valid_key(args.pilot_id):
        print("hpc-worker: invalid --pilot-id %r" % args.pilot_id, file=sys.stderr)
        return 2
    if args.slots < 1 or args.slots_per_gpu < 1:
        print("hpc-worker: --slots and --slots-per-gpu must be at least 1", file=sys.stderr)
        return 2
    root = args.workspace
    p.ensure_layout(root)
    log_path = args.log or p.pilot_path(root, args.pilot_id, p.PILOT_LOG)
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # two lines per job: no thread, process or caller looked up for records that never
    # show them (the logging HOWTO's "Optimization")
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    settings = PilotSettings(root, args.pilot_id, slots=args.slots,
                             idle_timeout=args.idle_timeout, walltime=args.walltime,
                             poll=args.poll, heartbeat=args.heartbeat, grace=args.grace,
                             slots_per_gpu=args.slots_per_gpu, gpu_sample=args.gpu_sample,
                             keep_env=args.keep_env, settle=args.settle)
    return Pilot(settings).run()


if __name__ == "__main__":
    sys.exit(main())
