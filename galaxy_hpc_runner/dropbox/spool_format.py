"""The spool's format version: ``SPOOL/format``, written by the spool itself.

The spool's records are read tolerantly (unknown fields ignored, missing ones defaulted),
so a newer release reads an older spool. What tolerance cannot cover is the other way
round, or a change of layout: so the spool says which format wrote it. A spool without
the file is of format 1 (every spool before the file existed) and gets it on first use;
a spool of a newer format than this release knows is refused, naming both, before
anything is read or written; an older one is upgraded here, step by step, when a later
format needs it. docs/ops.md ("Upgrading") tells the admin the rule.

Formats: 1, a job record file is one JSON object; 2, a job record file may hold more
lines after it, each the job's changing fields at a later step (``spool_records``). A
format 1 spool is a valid format 2 one: upgrading it only writes the new number, so that
an older release, which would read only a record's first line, refuses the spool.
"""

from __future__ import annotations

import json
from pathlib import Path

from galaxy_hpc_runner.dropbox.spool_records import SpoolError
from hpc_worker import protocol as p
from hpc_worker.records import read_bounded

SPOOL_FORMAT = 2  # this release's spool format
FORMAT_FILE = "format"  # SPOOL/format: {"spool_format": N}
_LIMIT = 4096


def ensure(spool: Path) -> int:
    """The format of the spool at ``spool`` after making sure this release may use it:
    writes the file when it is missing or older, SpoolError when it is newer or unreadable."""
    path = spool / FORMAT_FILE
    try:
        found = read_format(path)
    except FileNotFoundError:
        found = 0  # a new spool, or one from before the file existed (format 1)
    if found < SPOOL_FORMAT:  # 1 -> 2: nothing to convert (module docstring)
        p.atomic_write(str(path), json.dumps({"spool_format": SPOOL_FORMAT}) + "\n")
        return SPOOL_FORMAT
    if found > SPOOL_FORMAT:
        raise SpoolError(
            "%s: spool format %d, this release reads formats 1 to %d: run the release that "
            "wrote it (going back to an older release after a newer one used the spool is "
            "not supported; see docs/ops.md, Upgrading)" % (path, found, SPOOL_FORMAT))
    return found


def read_format(path: Path) -> int:
    """The number in ``SPOOL/format``; FileNotFoundError when absent, SpoolError when it
    is not a small regular file holding {"spool_format": N} with N >= 1."""
    try:
        data = json.loads(read_bounded(str(path), _LIMIT))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise SpoolError("%s: cannot be read (%s): it says which release wrote the spool; "
                         "restore it or, for a spool of this release, remove it" % (path, exc)
                         ) from exc
    found = data.get("spool_format") if isinstance(data, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise SpoolError("%s: holds %r, not {\"spool_format\": N}: restore it or, for a spool "
                         "of this release, remove it" % (path, data))
    return found
