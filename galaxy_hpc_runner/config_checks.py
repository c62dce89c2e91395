"""What ``hpc-batch check`` finds offline beyond single values: where a misplaced key
belongs, settings of another backend, the ssh files, and settings that contradict each
other (one walltime, the warning signal, slots against the GPUs asked for).

Every message starts with ``[section] key`` so :func:`locate` can prefix FILE:LINE.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from galaxy_hpc_runner.config import Config

# Keys that only one scheduler backend / transport type reads.
BACKEND_KEYS: dict[str, frozenset[str]] = {
    "slurm": frozenset({"partition", "gres", "mem", "cpus", "account", "qos", "extra_args",
                        "signal"}),
    "drmaa": frozenset({"native_spec"}),
}
TRANSPORT_KEYS: dict[str, frozenset[str]] = {
    "ssh": frozenset({"host", "port", "user", "key_file", "passphrase_env", "passphrase_file",
                      "known_hosts", "timeout"}),
}
# Keys that are gone, with what to do instead.
RETIRED: dict[tuple[str, str], str] = {
    ("scheduler", "time"): "is gone: [pilot] walltime is the one walltime, it sets the "
                           "scheduler's time limit and the pilot's own; move the value there",
    ("pilot", "code_dir"): "is gone: the submitter deploys the pilot itself as "
                           "W/bin/hpc_worker-vN-HASH.pyz (no checkout on the HPC side); remove it",
}
SLURM_SIGNAL_DEFAULT = "B:USR1@120"
_SIGNAL = re.compile(r"^(?:[RB]{1,2}:)?(?:SIG)?[A-Z0-9]+(?:@(\d+))?$")
_WHERE = re.compile(r"^\[(?P<section>[^\]]+)\](?: unknown key)? '?(?P<key>[A-Za-z0-9_.-]+)")
_SECTION_ONLY = re.compile(r"^(?:unknown section )?\[(?P<section>[^\]]+)\]")


def unknown_key(section: str, key: str, known_keys: dict[str, set[str]]) -> str:
    """The message for a key its section does not take: retired, misplaced, or a typo."""
    if (section, key) in RETIRED:
        return "[%s] %s %s" % (section, key, RETIRED[(section, key)])
    homes = [s for s, keys in known_keys.items() if key in keys and s != section]
    if homes:
        return "[%s] unknown key %r: it belongs in %s" % (
            section, key, " or ".join("[%s]" % s for s in homes))
    known = known_keys.get(section, set())
    close = difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.6)
    if close:
        return "[%s] unknown key %r: did you mean %s?" % (
            section, key, " or ".join(repr(c) for c in close))
    return "[%s] unknown key %r (known: %s)" % (section, key, ", ".join(sorted(known)))


def unknown_section(section: str, known_keys: dict[str, set[str]]) -> str:
    close = difflib.get_close_matches(section, sorted(known_keys) + ["hpc_env"], n=1)
    return "unknown section [%s]%s" % (section, ": did you mean [%s]?" % close[0] if close else "")


def foreign_keys(cfg: Config) -> list[str]:
    """Keys of a backend or transport other than the configured one: they do nothing."""
    errors = []
    for backend, keys in BACKEND_KEYS.items():
        if backend != cfg.backend:
            errors += ["[scheduler] %s is a %s setting: it has no effect with backend = %s "
                       "(remove it, or set backend = %s)" % (key, backend, cfg.backend, backend)
                       for key in sorted(keys & cfg.scheduler.keys())]
    for kind, keys in TRANSPORT_KEYS.items():
        if kind != cfg.transport_type:
            errors += ["[transport] %s is an %s setting: it has no effect with type = %s "
                       "(remove it, or set type = %s)" % (key, kind, cfg.transport_type, kind)
                       for key in sorted(keys & cfg.transport.keys())]
    return errors


def ssh_files(cfg: Config) -> list[str]:
    """The ssh transport's files exist and are readable, and the host's key is known."""
    if cfg.transport_type != "ssh":
        return []
    t = cfg.transport
    errors = [] if t.get("host") else ["[transport] host is required for type = ssh"]
    known_hosts = t.get("known_hosts") or os.path.expanduser("~/.ssh/known_hosts")
    for key, path in (("key_file", t.get("key_file")), ("known_hosts", known_hosts),
                      ("passphrase_file", t.get("passphrase_file"))):
        if path and not os.path.isfile(path):
            errors.append("[transport] %s = %s does not exist or is not a file%s" % (
                key, path, "" if t.get(key) else " (the default; set [transport] known_hosts)"))
        elif path and not os.access(path, os.R_OK):
            errors.append("[transport] %s = %s is not readable by this user (uid %d)" % (
                key, path, os.getuid()))
    if t.get("host") and os.access(known_hosts, os.R_OK):
        errors += _host_key_known(t["host"], int(t.get("port", "22")), known_hosts)
    return errors


def _host_key_known(host: str, port: int, known_hosts: str) -> list[str]:
    try:
        import paramiko
    except ImportError:  # pragma: no cover - paramiko is a core dependency
        return []
    try:
        keys = paramiko.HostKeys(known_hosts)
    except (OSError, paramiko.SSHException) as exc:
        return ["[transport] known_hosts = %s cannot be read: %s" % (known_hosts, exc)]
    name = host if port == 22 else "[%s]:%d" % (host, port)
    if keys.lookup(name) is None:
        return ["[transport] known_hosts = %s has no key for %s: connections would be refused; "
                "add it (ssh-keyscan -p %d %s, after checking its fingerprint)" % (
                    known_hosts, name, port, host)]
    return []


def contradictions(cfg: Config) -> list[str]:
    """Settings that each look fine but cannot all hold (issue 9, item 8)."""
    errors = []
    walltime = cfg.pilot.walltime
    if cfg.backend == "slurm":
        signal = cfg.scheduler.get("signal") or SLURM_SIGNAL_DEFAULT
        match = _SIGNAL.match(signal.strip().upper())
        if not match:
            errors.append("[scheduler] signal = %r is not Slurm's [B:]SIGNAL[@SECONDS] form "
                          "(e.g. %s)" % (signal, SLURM_SIGNAL_DEFAULT))
        elif int(match.group(1) or 60) >= walltime:
            errors.append("[scheduler] signal = %s warns %ss before the end, but [pilot] walltime "
                          "is only %gs: the pilot would be told to stop as it starts; warn "
                          "later (a smaller @SECONDS) or raise the walltime" % (
                              signal, match.group(1) or 60, walltime))
    gpus = gres_gpus(cfg)
    per_gpu = max(1, int(getattr(cfg.pilot, "slots_per_gpu", 1)))
    if gpus is not None and cfg.pilot.slots > gpus * per_gpu:
        errors.append("[pilot] slots = %d but the pilot asks for %d GPU(s) and slots_per_gpu "
                      "= %d, so only %d slot(s) get a GPU: lower slots, ask for more GPUs "
                      "(gres), or let slots share a GPU with [pilot] slots_per_gpu" % (
                          cfg.pilot.slots, gpus, per_gpu, gpus * per_gpu))
    return errors


def warnings(cfg: Config) -> list[str]:
    """What `check` warns of without refusing the configuration."""
    h_rt = grid_engine_h_rt(cfg)
    if h_rt is not None and h_rt < cfg.pilot.walltime:
        return ["[scheduler] native_spec asks Grid Engine for h_rt = %gs, less than [pilot] "
                "walltime = %gs: Grid Engine will kill the pilot before it drains (its jobs are "
                "released and rerun); make [pilot] walltime at most h_rt" % (
                    h_rt, cfg.pilot.walltime)]
    return []


def grid_engine_h_rt(cfg: Config) -> float | None:
    """Seconds of the ``h_rt`` in a drmaa backend's native_spec (``-l h_rt=1:30:00`` or
    seconds); None when there is none or it is not in a form Grid Engine documents."""
    if cfg.backend != "drmaa":
        return None
    match = re.search(r"(?:^|[\s,])h_rt=([0-9:]+)(?=$|[\s,])", cfg.scheduler.get("native_spec", ""))
    if not match:
        return None
    parts = match.group(1).split(":")
    if len(parts) > 3 or not all(parts):
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


def gres_gpus(cfg: Config) -> int | None:
    """GPUs the pilot asks the scheduler for; None when it asks for none."""
    specs = [cfg.scheduler.get("gres", "")]
    for key in ("extra_args", "native_spec"):
        specs += re.findall(r"--gres[= ](\S+)", cfg.scheduler.get(key, ""))
    total, seen = 0, False
    for item in ",".join(specs).split(","):
        parts = item.strip().split(":")
        if parts and parts[0] == "gres":
            parts = parts[1:]
        if not parts or parts[0] != "gpu":
            continue
        seen = True
        count = re.match(r"^\d+", parts[-1]) if len(parts) > 1 else None
        total += int(count.group(0)) if count else 1
    return total if seen else None


def line_index(path: Path) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, and (section, "") -> the section header's line."""
    index: dict[tuple[str, str], int] = {}
    section = ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return index
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or line[:1].isspace():
            continue
        header = re.match(r"^\[([^\]]+)\]", stripped)
        if header:
            section = header.group(1).strip()
            index.setdefault((section, ""), number)
        elif section:
            key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
            index.setdefault((section, key), number)
    return index


def locate(path: Path, index: dict[tuple[str, str], int], message: str) -> str:
    """``FILE:LINE: message`` for a message about a key or section of the file."""
    where = _WHERE.match(message)
    line = index.get((where["section"], where["key"].lower())) if where else None
    section = _SECTION_ONLY.match(message)
    if line is None and section:
        line = index.get((section["section"], ""))
    return "%s:%d: %s" % (path, line, message) if line else "%s: %s" % (path, message)


def by_line(messages: list[str]) -> list[str]:
    """Located messages in file order; the others (whole-file problems) after them."""
    def line(message: str) -> int:
        found = re.search(r":(\d+): ", message)
        return int(found.group(1)) if found else 1 << 30
    return sorted(messages, key=line)
