"""The INI configuration: load it, give every key its default, say exactly what is wrong."""

from __future__ import annotations

import configparser
import hashlib
import importlib.resources
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hpc_worker
from galaxy_hpc_runner import config_checks as checks
from galaxy_hpc_runner.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# Where this machine imports the pilot's code from (an installed wheel or a checkout):
# right for the local backend and a shared file system; the HPC side may differ.
WORKER_CODE_DIR = Path(hpc_worker.__file__).resolve().parent.parent
RESERVED_VARS = ("workspace", "scripts", "containers")
OLD_SPOOL = ".hpc-batch"  # the default spool of releases before 0.2, inside the dropbox
BACKENDS = ("local", "slurm", "drmaa")
TRANSPORTS = ("local", "ssh")

# Keys each fixed section accepts; [hpc_env] is free-form, [scheduler] and
# [transport] also take backend-specific keys listed here.
KNOWN_KEYS: dict[str, set[str]] = {
    "dropbox": {"path", "allowed_input_roots", "allowed_output_roots", "settle"},
    "spool": {"path", "keep_finished_days"},
    "templates": {"path"},
    "submitter": {"interval", "max_log_bytes", "lock_timeout", "metrics_file"},
    "pilot": {"slots", "idle_timeout", "walltime", "max_attempts", "max_releases", "poll",
              "heartbeat", "grace", "python", "slots_per_gpu"},
    "scheduler": {"backend", "max_pilots", "backlog_per_pilot", "partition", "gres",
                  "mem", "cpus", "account", "qos", "extra_args", "signal", "native_spec",
                  "command_timeout", "failure_backoff", "min_pilots", "resubmit_ahead"},
    "transport": {"type", "host", "port", "user", "key_file", "passphrase_env",
                  "passphrase_file", "known_hosts", "timeout"},
}

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_UNIT = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def shipped(rel: str) -> Path:
    """A file or directory the package ships, by its path in the source tree.

    ``templates``, ``examples/demo/templates``, ``examples/hpc-batch.ini``,
    ``examples/ops`` (systemd units, crontab), ``tool_wrappers``,
    ``job_conf.example.yml``: an installed wheel holds them under
    ``galaxy_hpc_runner/shipped/`` (setup.py maps them there); a checkout or an editable
    install reads them where they live.
    """
    packaged = Path(str(importlib.resources.files("galaxy_hpc_runner").joinpath("shipped", rel)))
    if packaged.exists():
        return packaged
    checkout = PACKAGE_DIR.parent / rel
    if checkout.exists() and (PACKAGE_DIR.parent / "setup.cfg").is_file():
        return checkout
    raise ConfigError("%s is not part of this installation (looked in %s): reinstall "
                      "galaxy-hpc-batch" % (rel, packaged))


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError("not a duration: %r" % value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("not a duration: %r (it must be a finite number)" % value)
        if value < 0:
            raise ValueError("not a duration: %r (it must not be negative)" % value)
        return float(value)
    text = str(value).strip()
    unit = _UNIT.match(text)
    if unit:
        return float(unit.group(1)) * _UNITS[unit.group(2)]
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return parse_duration(number)  # says what is wrong with a negative or infinite one
    clock = _DURATION.match(text)
    if not clock or (":" not in text and "-" not in text):
        raise ValueError("not a duration: %r (use seconds, 15m, 2h or D-HH:MM:SS)" % text)
    days, first, second, third = (int(g) if g else 0 for g in clock.groups())
    if clock.group(4) is not None:
        return float(days * 86400 + first * 3600 + second * 60 + third)
    if clock.group(1) is not None:  # D-HH or D-HH:MM
        return float(days * 86400 + first * 3600 + second * 60)
    return float(first * 60 + second)  # MM:SS


@dataclass
class PilotConf:
    slots: int = 1
    idle_timeout: float = 300.0
    walltime: float = 86400.0
    max_attempts: int = 3
    max_releases: int = 3  # times a stopping pilot may give a job back before it fails
    poll: float = 0.5
    heartbeat: float = 10.0
    grace: float = 10.0
    python: str = sys.executable
    slots_per_gpu: int = 1  # slots sharing one GPU (check: slots <= GPUs x slots_per_gpu)


@dataclass
class Config:
    """Everything the submitting side needs, with defaults filled in."""

    path: Path
    dropbox: Path
    allowed_input_roots: list[Path]
    allowed_output_roots: list[Path]
    spool: Path
    templates: Path
    hpc_env: dict[str, str]
    pilot: PilotConf
    backend: str = "local"
    max_pilots: int = 1
    backlog_per_pilot: int = 0
    failure_backoff: float = 30.0
    min_pilots: int = 0
    resubmit_ahead: float = 0.0
    scheduler: dict[str, str] = field(default_factory=dict)
    transport: dict[str, str] = field(default_factory=dict)
    settle: float = 2.0
    interval: float = 5.0
    max_log_bytes: int = 1 << 20
    lock_timeout: float = 60.0
    keep_finished_days: float = 30.0
    metrics_file: Path | None = None  # Prometheus text file; default SPOOL/metrics.prom

    @property
    def workspace(self) -> str:
        """The HPC-side workspace root, as the HPC side spells it."""
        return self.hpc_env["workspace"]

    @property
    def transport_type(self) -> str:
        return self.transport.get("type", "local")

    @property
    def server_tag(self) -> str:
        """This submitting server's name in a shared workspace (``[hpc_env] server``)."""
        return self.hpc_env.get("server") or default_server_tag()


SERVER_TAG = re.compile(r"^[A-Za-z0-9-]{1,40}$")


def default_server_tag() -> str:
    """A stable tag for this machine: its short host name, [A-Za-z0-9-] only."""
    import socket

    tag = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return tag[:40] or "server"


class _Reader:
    """Reads typed values from a ConfigParser and collects every problem."""

    def __init__(self, parser: configparser.ConfigParser, base: Path) -> None:
        self.cp = parser
        self.base = base  # relative paths are relative to the INI file's directory
        self.errors: list[str] = []

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        if self.cp.has_option(section, key):
            return self.cp.get(section, key).strip()
        return default

    def require(self, section: str, key: str) -> str:
        value = self.get(section, key)
        if not value:
            self.errors.append("[%s] %s is required" % (section, key))
            return ""
        return value

    def number(self, section: str, key: str, default: float, kind: type = float,
               minimum: float = 0) -> float:
        raw = self.get(section, key)
        if raw is None:
            return default
        try:
            value = parse_duration(raw) if kind is float else int(raw)
        except ValueError as exc:
            self.errors.append("[%s] %s = %r is not a valid %s" % (
                section, key, raw, _duration_hint(exc) if kind is float else "whole number"))
            return default
        if value < minimum:
            self.errors.append("[%s] %s = %r must be at least %s" % (section, key, raw, minimum))
        return value

    def paths(self, section: str, key: str, default: list[Path]) -> list[Path]:
        raw = self.get(section, key)
        if not raw:
            return default
        return [self.path(item) for item in raw.split()]

    def path(self, value: str) -> Path:
        """``~`` expanded; a relative path is relative to the INI file, not the cwd."""
        return (self.base / Path(value).expanduser()).resolve()

    def unknown_keys(self) -> None:
        for section in self.cp.sections():
            known = KNOWN_KEYS.get(section)
            if section == "hpc_env":
                continue
            if known is None:
                self.errors.append(checks.unknown_section(section, KNOWN_KEYS))
                continue
            self.errors += [checks.unknown_key(section, key, KNOWN_KEYS)
                            for key in self.cp.options(section) if key not in known]


def _parser(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            cp.read_file(handle)
    except OSError as exc:
        raise ConfigError("cannot read config %s: %s" % (path, exc.strerror)) from exc
    except configparser.Error as exc:
        raise ConfigError("config %s is not a valid INI file: %s" % (path, exc)) from exc
    return cp


def _pilot(r: _Reader) -> PilotConf:
    d = PilotConf()
    return PilotConf(
        slots=int(r.number("pilot", "slots", d.slots, int, 1)),
        idle_timeout=r.number("pilot", "idle_timeout", d.idle_timeout),
        walltime=r.number("pilot", "walltime", d.walltime),
        max_attempts=int(r.number("pilot", "max_attempts", d.max_attempts, int, 1)),
        max_releases=int(r.number("pilot", "max_releases", d.max_releases, int, 1)),
        poll=r.number("pilot", "poll", d.poll),
        heartbeat=r.number("pilot", "heartbeat", d.heartbeat),
        grace=r.number("pilot", "grace", d.grace),
        slots_per_gpu=int(r.number("pilot", "slots_per_gpu", d.slots_per_gpu, int, 1)),
        python=r.get("pilot", "python") or d.python)


def _hpc_env(r: _Reader) -> dict[str, str]:
    env = dict(r.cp.items("hpc_env")) if r.cp.has_section("hpc_env") else {}
    for key in RESERVED_VARS:
        r.require("hpc_env", key)
    for key in env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            r.errors.append("[hpc_env] %r is not a valid template variable name" % key)
    return {k: v.strip() for k, v in env.items()}


def read_config(path: str | Path) -> tuple[Config, list[str]]:
    """Parse ``path``; returns the config and every problem found (empty when valid)."""
    path = Path(path).resolve()
    r = _Reader(_parser(path), path.parent)
    r.unknown_keys()
    dropbox = r.path(r.require("dropbox", "path") or ".")
    spool = r.path(r.get("spool", "path") or str(default_spool(dropbox)))
    if not r.get("spool", "path") and (dropbox / OLD_SPOOL / "jobs").is_dir():
        r.errors.append(
            "[spool] path: the default spool moved out of the dropbox (a job may write under "
            "the dropbox) from %s to %s: stop the submitter and Galaxy, then `mv %s %s`, or set "
            "[spool] path" % (dropbox / OLD_SPOOL, spool, dropbox / OLD_SPOOL, spool))
    templates = r.get("templates", "path")
    metrics = r.get("submitter", "metrics_file")
    cfg = Config(
        path=path, dropbox=dropbox,
        allowed_input_roots=r.paths("dropbox", "allowed_input_roots", [dropbox]),
        allowed_output_roots=r.paths("dropbox", "allowed_output_roots", [dropbox]),
        spool=spool, metrics_file=r.path(metrics) if metrics else spool / "metrics.prom",
        templates=r.path(templates) if templates else _default_templates(r),
        hpc_env=_hpc_env(r), pilot=_pilot(r),
        backend=r.get("scheduler", "backend", "local") or "local",
        max_pilots=int(r.number("scheduler", "max_pilots", 1, int, 1)),
        backlog_per_pilot=int(r.number("scheduler", "backlog_per_pilot", 0, int, 0)),
        failure_backoff=r.number("scheduler", "failure_backoff", 30.0),
        min_pilots=int(r.number("scheduler", "min_pilots", 0, int, 0)),
        resubmit_ahead=r.number("scheduler", "resubmit_ahead", 0.0),
        scheduler=_scheduler(r), transport=_transport(r),
        settle=r.number("dropbox", "settle", 2.0),
        interval=r.number("submitter", "interval", 5.0),
        max_log_bytes=int(r.number("submitter", "max_log_bytes", 1 << 20, int, 1024)),
        lock_timeout=r.number("submitter", "lock_timeout", 60.0),
        keep_finished_days=r.number("spool", "keep_finished_days", 30.0))
    r.errors.extend(_semantic_errors(cfg))
    r.errors.extend(checks.foreign_keys(cfg) + checks.ssh_files(cfg) + checks.contradictions(cfg))
    index = checks.line_index(path)
    return cfg, checks.by_line([checks.locate(path, index, error) for error in r.errors])


def default_spool(dropbox: Path) -> Path:
    """The spool when ``[spool] path`` is unset: private to this user, never under the dropbox.

    ``$XDG_STATE_HOME/galaxy-hpc-batch/spool-NAME-HASH`` (``~/.local/state`` without it):
    the dropbox's name for the eye and a hash of its path, so two dropboxes never share one.
    """
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    digest = hashlib.sha256(str(dropbox).encode()).hexdigest()[:8]
    return Path(state) / "galaxy-hpc-batch" / ("spool-%s-%s" % (dropbox.name or "root", digest))


def _duration_hint(exc: ValueError) -> str:
    hint = str(exc).partition(" (")[2].rstrip(")")
    return "duration (%s)" % hint if hint else "duration: %s" % exc


def _default_templates(r: _Reader) -> Path:
    try:
        return shipped("templates")
    except ConfigError as exc:
        r.errors.append("[templates] path: %s; set it" % exc)
        return Path("/nonexistent")


def _section(r: _Reader, name: str) -> dict[str, str]:
    return {k: v.strip() for k, v in r.cp.items(name)} if r.cp.has_section(name) else {}


def _scheduler(r: _Reader) -> dict[str, str]:
    """[scheduler] as the backends read it: numbers checked and given in plain seconds."""
    opts = _section(r, "scheduler")
    if "command_timeout" in opts:
        timeout = r.number("scheduler", "command_timeout", 60.0)
        if timeout <= 0:
            r.errors.append("[scheduler] command_timeout must be more than 0 seconds")
        opts["command_timeout"] = "%g" % timeout
    if "cpus" in opts:
        opts["cpus"] = "%d" % r.number("scheduler", "cpus", 1, int, 1)
    return opts


def _transport(r: _Reader) -> dict[str, str]:
    """[transport] with its port and timeout checked, its files relative to the INI file."""
    opts = _section(r, "transport")
    if "port" in opts:
        port = int(r.number("transport", "port", 22, int, 1))
        if port > 65535:
            r.errors.append("[transport] port = %d is not a TCP port (1-65535)" % port)
        opts["port"] = str(port)
    if "timeout" in opts:
        timeout = r.number("transport", "timeout", 20.0)
        if timeout <= 0:  # 0 would make every connect non-blocking: it always fails
            r.errors.append("[transport] timeout must be more than 0 seconds")
        opts["timeout"] = "%g" % timeout
    for key in ("key_file", "known_hosts", "passphrase_file"):
        if opts.get(key):
            opts[key] = str(r.path(opts[key]))
    return opts


def _semantic_errors(cfg: Config) -> list[str]:
    errors = []
    if cfg.backend not in BACKENDS:
        errors.append("[scheduler] backend = %r: choose one of %s" % (
            cfg.backend, ", ".join(BACKENDS)))
    if cfg.transport_type not in TRANSPORTS:
        errors.append("[transport] type = %r: choose one of %s" % (
            cfg.transport_type, ", ".join(TRANSPORTS)))
    if not cfg.dropbox.is_dir():
        errors.append("[dropbox] path %s is not an existing directory" % cfg.dropbox)
    if not cfg.templates.is_dir():
        errors.append("[templates] path %s is not an existing directory" % cfg.templates)
    for key, roots in (("allowed_input_roots", cfg.allowed_input_roots),
                       ("allowed_output_roots", cfg.allowed_output_roots)):
        errors += ["[dropbox] %s: %s is not an existing directory" % (key, root)
                   for root in roots if not root.is_dir()]
    workspace = cfg.hpc_env.get("workspace", "")
    if workspace and not workspace.startswith("/"):
        errors.append("[hpc_env] workspace = %r must be an absolute path" % workspace)
    if "server" in cfg.hpc_env and not SERVER_TAG.match(cfg.hpc_env["server"]):
        errors.append("[hpc_env] server = %r: use 1 to 40 letters, digits or '-' (it names "
                      "this submitting server in a shared workspace)" % cfg.hpc_env["server"])
    if cfg.pilot.idle_timeout >= cfg.pilot.walltime:
        errors.append("[pilot] idle_timeout must be shorter than walltime")
    errors += ["[pilot] %s must be more than 0 seconds" % key for key in ("walltime", "poll",
               "heartbeat") if getattr(cfg.pilot, key) <= 0]
    from galaxy_hpc_runner.dropbox.boundary import config_overlaps  # issue 10 (H4)

    errors += config_overlaps(cfg)
    return errors


def load_config(path: str | Path) -> Config:
    """Parse and validate; raises ConfigError listing every problem."""
    cfg, errors = read_config(path)
    if errors:
        raise ConfigError("invalid config %s:\n  - %s" % (cfg.path, "\n  - ".join(errors)))
    return cfg
