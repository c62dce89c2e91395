"""The INI configuration: load it, give every key its default, say exactly what is wrong."""

from __future__ import annotations

import configparser
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from galaxy_hpc_runner.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATES = PROJECT_DIR / "templates"
RESERVED_VARS = ("workspace", "scripts", "containers")
BACKENDS = ("local", "slurm", "drmaa")
TRANSPORTS = ("local", "ssh")

# Keys each fixed section accepts; [hpc_env] is free-form, [scheduler] and
# [transport] also take backend-specific keys listed here.
KNOWN_KEYS: dict[str, set[str]] = {
    "dropbox": {"path", "allowed_input_roots", "allowed_output_roots", "settle"},
    "spool": {"path", "keep_finished_days"},
    "templates": {"path"},
    "submitter": {"interval", "max_log_bytes", "lock_timeout"},
    "pilot": {"slots", "idle_timeout", "walltime", "max_attempts", "max_releases", "poll",
              "heartbeat", "grace", "python", "code_dir"},
    "scheduler": {"backend", "max_pilots", "backlog_per_pilot", "partition", "gres", "time",
                  "mem", "cpus", "account", "qos", "extra_args", "signal", "native_spec",
                  "command_timeout", "failure_backoff", "min_pilots", "resubmit_ahead"},
    "transport": {"type", "host", "port", "user", "key_file", "passphrase_env",
                  "passphrase_file", "known_hosts", "timeout"},
}

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_UNIT = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError("not a duration: %r" % value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative: %r" % value)
        return float(value)
    text = str(value).strip()
    unit = _UNIT.match(text)
    if unit:
        return float(unit.group(1)) * _UNITS[unit.group(2)]
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
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
    code_dir: str = str(PROJECT_DIR)


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

    @property
    def workspace(self) -> str:
        """The HPC-side workspace root, as the HPC side spells it."""
        return self.hpc_env["workspace"]

    @property
    def transport_type(self) -> str:
        return self.transport.get("type", "local")


class _Reader:
    """Reads typed values from a ConfigParser and collects every problem."""

    def __init__(self, parser: configparser.ConfigParser) -> None:
        self.cp = parser
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
        except ValueError:
            self.errors.append("[%s] %s = %r is not a valid %s" % (
                section, key, raw, "duration" if kind is float else "whole number"))
            return default
        if value < minimum:
            self.errors.append("[%s] %s = %r must be at least %s" % (section, key, raw, minimum))
        return value

    def paths(self, section: str, key: str, default: list[Path]) -> list[Path]:
        raw = self.get(section, key)
        if not raw:
            return default
        return [Path(item).expanduser().resolve() for item in raw.split()]

    def unknown_keys(self) -> None:
        for section in self.cp.sections():
            known = KNOWN_KEYS.get(section)
            if section == "hpc_env":
                continue
            if known is None:
                self.errors.append("unknown section [%s]" % section)
                continue
            for key in self.cp.options(section):
                if key not in known:
                    self.errors.append("[%s] unknown key %r (known: %s)" % (
                        section, key, ", ".join(sorted(known))))


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
        python=r.get("pilot", "python") or d.python,
        code_dir=r.get("pilot", "code_dir") or d.code_dir)


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
    r = _Reader(_parser(path))
    r.unknown_keys()
    dropbox = Path(r.require("dropbox", "path") or ".").expanduser().resolve()
    spool = r.get("spool", "path")
    cfg = Config(
        path=path, dropbox=dropbox,
        allowed_input_roots=r.paths("dropbox", "allowed_input_roots", [dropbox]),
        allowed_output_roots=r.paths("dropbox", "allowed_output_roots", [dropbox]),
        spool=Path(spool).expanduser().resolve() if spool else dropbox / ".hpc-batch",
        templates=Path(r.get("templates", "path") or DEFAULT_TEMPLATES).expanduser().resolve(),
        hpc_env=_hpc_env(r), pilot=_pilot(r),
        backend=r.get("scheduler", "backend", "local") or "local",
        max_pilots=int(r.number("scheduler", "max_pilots", 1, int, 1)),
        backlog_per_pilot=int(r.number("scheduler", "backlog_per_pilot", 0, int, 0)),
        failure_backoff=r.number("scheduler", "failure_backoff", 30.0),
        min_pilots=int(r.number("scheduler", "min_pilots", 0, int, 0)),
        resubmit_ahead=r.number("scheduler", "resubmit_ahead", 0.0),
        scheduler=dict(r.cp.items("scheduler")) if r.cp.has_section("scheduler") else {},
        transport=dict(r.cp.items("transport")) if r.cp.has_section("transport") else {},
        settle=r.number("dropbox", "settle", 2.0),
        interval=r.number("submitter", "interval", 5.0),
        max_log_bytes=int(r.number("submitter", "max_log_bytes", 1 << 20, int, 1024)),
        lock_timeout=r.number("submitter", "lock_timeout", 60.0),
        keep_finished_days=r.number("spool", "keep_finished_days", 30.0))
    r.errors.extend(_semantic_errors(cfg))
    return cfg, r.errors


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
    for root in cfg.allowed_input_roots + cfg.allowed_output_roots:
        if not root.is_dir():
            errors.append("allowed root %s is not an existing directory" % root)
    workspace = cfg.hpc_env.get("workspace", "")
    if workspace and not workspace.startswith("/"):
        errors.append("[hpc_env] workspace = %r must be an absolute path" % workspace)
    if cfg.pilot.idle_timeout >= cfg.pilot.walltime:
        errors.append("[pilot] idle_timeout must be shorter than walltime")
    return errors


def load_config(path: str | Path) -> Config:
    """Parse and validate; raises ConfigError listing every problem."""
    cfg, errors = read_config(path)
    if errors:
        raise ConfigError("invalid config %s:\n  - %s" % (cfg.path, "\n  - ".join(errors)))
    return cfg
