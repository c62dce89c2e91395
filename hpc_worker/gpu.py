"""GPUs: which devices each slot may use, and what the jobs did with them.

Allocation. The devices a pilot may hand out are those its scheduler gave it:
``CUDA_VISIBLE_DEVICES`` (what Slurm's ``--gres=gpu:N`` sets), else
``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``. Slot *i* gets device ``i // slots_per_gpu``
of that list; slots beyond ``devices x slots_per_gpu`` are not started (an error in
the pilot's log names the settings). A node with none of these variables set (the
local backend, a CPU partition) runs every slot, slot *i* with the nominal device
``i`` as before: nothing is known about GPUs there, so nothing is enforced or counted.

Accounting. Where ``nvidia-smi`` is on the PATH, the pilot samples every device
(one ``nvidia-smi --query-gpu`` per interval for the whole pilot, never blocking the
loop) and adds to each job the utilisation and memory of its devices. A missing or
failing tool means missing figures, never a failed job.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from typing import Dict, List, Mapping, Optional

log = logging.getLogger(__name__)

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
NO_DEVICES = ("", "NoDevFiles", "-1")
QUERY = "index,uuid,utilization.gpu,memory.used"
SAMPLE_TIMEOUT = 30.0


class Allocation:
    """The pilot's devices and which slot gets which."""

    def __init__(self, devices: List[str], slots: int, slots_per_gpu: int = 1,
                 source: str = "") -> None:
        self.devices = devices
        self.source = source  # the variable they came from; "" when none was set
        self.slots_per_gpu = max(1, slots_per_gpu)
        self.requested = slots
        self.slots = min(slots, len(devices) * self.slots_per_gpu) if source else slots

    @property
    def real(self) -> bool:
        """Devices came from the scheduler (else they are nominal slot numbers)."""
        return bool(self.source)

    def device(self, slot: int) -> str:
        if not self.real:
            return str(slot)
        return self.devices[slot // self.slots_per_gpu]

    def refused_slots_message(self) -> str:
        """Why fewer slots than asked run ("" when all of them do)."""
        if self.slots >= self.requested:
            return ""
        return ("--slots %d but %s=%s gives %d GPU(s) x --slots-per-gpu %d = %d slot(s): "
                "the other %d slot(s) are not started; ask the scheduler for more GPUs "
                "(gres), lower [pilot] slots or raise [pilot] slots_per_gpu"
                % (self.requested, self.source, ",".join(self.devices), len(self.devices),
                   self.slots_per_gpu, self.slots, self.requested - self.slots))


def allocation(env: Mapping[str, str], slots: int, slots_per_gpu: int = 1) -> Allocation:
    """The allocation the environment describes (see the module docstring)."""
    for name in GPU_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        devices = [d.strip() for d in value.split(",") if d.strip()]
        if value.strip() in NO_DEVICES or not devices:
            continue
        return Allocation(devices, slots, slots_per_gpu, source=name)
    return Allocation([], slots, slots_per_gpu)


# -- nvidia-smi ------------------------------------------------------------------------
def parse_query(text: str) -> Dict[str, Dict[str, Optional[float]]]:
    """``nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used --format=csv,
    noheader,nounits`` -> {index or uuid: {"util": %, "mem": MiB}}; fields the GPU does not
    report ("[N/A]", "[Not Supported]") are None; malformed lines are skipped."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4 or not fields[0]:
            continue
        figures = {"util": _number(fields[2]), "mem": _number(fields[3])}
        out[fields[0]] = figures
        if fields[1]:
            out[fields[1]] = figures
    return out


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value >= 0 else None


class Usage:
    """One job's device figures, added to on every sample."""

    def __init__(self) -> None:
        self.samples = 0
        self.util_sum = 0.0
        self.util_count = 0
        self.mem_peak: Optional[float] = None

    def add(self, figures: Dict[str, Optional[float]]) -> None:
        self.samples += 1
        util, mem = figures.get("util"), figures.get("mem")
        if util is not None:
            self.util_sum += util
            self.util_count += 1
        if mem is not None:
            self.mem_peak = mem if self.mem_peak is None else max(self.mem_peak, mem)

    def metrics(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if self.util_count:
            out["gpu_util_mean_pct"] = round(self.util_sum / self.util_count, 1)
        if self.mem_peak is not None:
            out["gpu_mem_peak_mib"] = self.mem_peak
        if self.samples:
            out["gpu_samples"] = self.samples
        return out


class Sampler:
    """Runs ``nvidia-smi`` every ``interval`` seconds without waiting for it."""

    def __init__(self, interval: float, tool: Optional[str] = None) -> None:
        self.tool = tool if tool is not None else (shutil.which("nvidia-smi") or "")
        self.interval = interval
        self.next_at = 0.0
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.started = 0.0
        self.failed = False

    @property
    def active(self) -> bool:
        return bool(self.tool) and self.interval > 0 and not self.failed

    def tick(self, now: float) -> Optional[Dict[str, Dict[str, Optional[float]]]]:
        """Start a sample when due; the figures of one that has finished, else None."""
        if not self.active:
            return None
        if self.proc is None:
            if now >= self.next_at:
                self._start(now)
            return None
        if self.proc.poll() is None:
            if now - self.started > SAMPLE_TIMEOUT:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                log.warning("nvidia-smi did not answer in %.0fs: sample skipped", SAMPLE_TIMEOUT)
            return None
        return self._harvest()

    def _start(self, now: float) -> None:
        self.next_at = now + self.interval
        self.started = now
        try:
            self.proc = subprocess.Popen(
                [self.tool, "--query-gpu=" + QUERY, "--format=csv,noheader,nounits"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("nvidia-smi cannot be run (%s): no GPU figures from this pilot", exc)
            self.failed = True

    def _harvest(self) -> Optional[Dict[str, Dict[str, Optional[float]]]]:
        proc, self.proc = self.proc, None
        assert proc is not None and proc.stdout is not None
        text = proc.stdout.read(1 << 20).decode("utf-8", "replace")
        proc.stdout.close()
        if proc.returncode != 0:
            log.warning("nvidia-smi exited %s: sample skipped", proc.returncode)
            return None
        return parse_query(text)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


class Ledger:
    """Per-pilot device time: held by a job, or held idle."""

    def __init__(self, alloc: Allocation) -> None:
        self.alloc = alloc
        self.idle = 0.0
        self.busy = 0.0
        self.last = time.time()

    def account(self, now: float, busy_devices: List[str]) -> None:
        """Add the time since the last call, split over busy and idle devices."""
        elapsed, self.last = max(0.0, now - self.last), now
        if not self.alloc.real:
            return
        busy = len(set(busy_devices) & set(self.alloc.devices))
        self.busy += elapsed * busy
        self.idle += elapsed * (len(self.alloc.devices) - busy)


def job_metrics(alloc: Allocation, device: str, runtime: float,
                usage: Optional[Usage]) -> Dict[str, object]:
    """The GPU figures of one finished job (none on a node without real GPUs)."""
    if not alloc.real:
        return {}
    out: Dict[str, object] = {"gpu_devices": device, "gpu_seconds": round(runtime, 3),
                              "gpu_shared_by": alloc.slots_per_gpu}
    if usage is not None:
        out.update(usage.metrics())
    return out


def env_for(device: str) -> Dict[str, str]:
    """The variables that point a job at its slot's device."""
    return {"CUDA_VISIBLE_DEVICES": device, "GPU_DEVICE_ORDINAL": device}

