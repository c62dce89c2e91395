"""Site checks of the trust boundary: what a job may read or write stays apart from the machinery.

A job's inputs are read from, and its outputs written to, the allowed input and
output roots. If the spool, the templates, the HPC workspace (on a local
transport), the pilot's code or the config lay under one of them, a description
could read the machinery's files as inputs or overwrite them as outputs (a spool
record or a template is code the next pass runs). ``check`` and start-up refuse
such a config; :func:`config_overlaps` says which paths clash and what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import hpc_worker

if TYPE_CHECKING:  # config imports this module inside a function: no cycle at run time
    from galaxy_hpc_runner.config import Config


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def protected_paths(cfg: Config) -> list[tuple[str, Path]]:
    """The machinery's own paths on this machine, with the setting that names each."""
    paths = [("[spool] path", _real(cfg.spool)), ("[templates] path", _real(cfg.templates)),
             ("the config file", _real(cfg.path))]
    if cfg.transport_type == "local":
        workspace = cfg.hpc_env.get("workspace", "")
        if workspace.startswith("/"):
            paths.append(("[hpc_env] workspace (it holds the pilot files)", _real(workspace)))
        paths.append(("the pilot's code (what the deployed zipapp is built from)",
                      _real(Path(hpc_worker.__file__).parent)))
    return paths


def config_overlaps(cfg: Config) -> list[str]:
    """Every clash of a protected path with an allowed input or output root (empty: none)."""
    problems = []
    roots = [("allowed_input_roots", _real(r)) for r in cfg.allowed_input_roots] + \
            [("allowed_output_roots", _real(r)) for r in cfg.allowed_output_roots]
    for what, path in protected_paths(cfg):
        for setting, root in roots:
            if _related(path, root):
                problems.append(
                    "%s %s overlaps [dropbox] %s entry %s: a job could read or overwrite the "
                    "submitter's own files there; keep them apart (set [dropbox] %s to the "
                    "directories holding the data, or move %s elsewhere)"
                    % (what, path, setting, root, setting, what))
    return problems


def dropbox_warnings(cfg: Config) -> list[str]:
    """Warnings for ``check``: a dropbox others can write without the sticky bit."""
    try:
        mode = os.stat(cfg.dropbox).st_mode
    except OSError:
        return []
    if mode & (stat.S_IWOTH | stat.S_IWGRP) and not mode & stat.S_ISVTX:
        return ["[dropbox] path %s is writable by %s without the sticky bit: they can rename "
                "or delete other users' descriptions and results (chmod +t %s, or make it "
                "writable by its owner only)"
                % (cfg.dropbox, "everyone" if mode & stat.S_IWOTH else "its group",
                   cfg.dropbox)]
    return []
