"""A private file the attacks try to leak, and the check that nothing leaked."""

from __future__ import annotations

from pathlib import Path

from tests.sitekit import Site

SECRET = "TOP-SECRET-CONTENT"


def make_secret(site: Site) -> Path:
    path = site.root / "private.txt"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def nothing_leaked(site: Site) -> None:
    for path in site.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "private.txt":
            assert SECRET not in path.read_text(errors="replace"), path
