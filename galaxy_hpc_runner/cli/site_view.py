"""The site-wide part of ``hpc-batch status``: every server's pilots and queue, as the
HPC-side registry (:mod:`galaxy_hpc_runner.dropbox.registry`) shows them, with the GPU
time the pilots held (busy and idle) and its total over the site."""

from __future__ import annotations

from typing import Any

from galaxy_hpc_runner.cli import gpu_figures, jobs
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.registry import Registry
from galaxy_hpc_runner.errors import TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker.states import JobState

PILOTS_SHOWN = 20


def registry_of(cfg: Config, transport: Transport) -> Registry:
    """The HPC-side registry as ``status`` reads it: each pilot's heartbeat read once, for
    the site picture and this server's pilot lines alike (``Registry.heartbeat``)."""
    registry = Registry(transport, cfg.workspace, getattr(cfg, "server_tag", ""))
    registry.beats = {}
    return registry


def site_picture(registry: Registry) -> dict[str, Any] | None:
    """Every server's pilots and queue from the HPC-side registry, with the GPU time of
    the live pilots and of the newest gone ones (``registry.GONE_BEATS``, their last
    heartbeat); None when it cannot be read."""
    try:
        site = registry.picture(with_gone=True)
    except (OSError, TransportError, ValueError, TypeError):
        return None
    for pilot in site["pilots"]:
        pilot["gpu"] = gpu_figures.pilot_figures(pilot.pop("gpu_time", None))
    site["gpu_total"] = gpu_figures.total(pilot["gpu"] for pilot in site["pilots"])
    return site


def site_lines(site: dict[str, Any] | None) -> list[str]:
    """The other servers' queues and pilots, and the site's GPU total; nothing when this
    server is alone and no pilot held a GPU (the lines above tell everything)."""
    if not site:
        return []
    lines = []
    if set(site.get("servers", [])) - {site.get("server")}:
        lines.append("site (workspace shared by %s):" % ", ".join(site["servers"]))
        for server, queue in sorted(site.get("queue", {}).items()):
            lines.append("  queue of %s: ready %s, claimed %s" % (
                server or "-", queue.get("ready", 0), queue.get(JobState.CLAIMED, 0)))
        others = [pl for pl in site.get("pilots", []) if not pl.get("mine")]
        for pilot in others[-PILOTS_SHOWN:]:
            beat = pilot.get("heartbeat") or {}
            lines.append("  %s of %s: %s%s%s" % (
                pilot.get("pilot_id"), pilot.get("server"), pilot.get("state"),
                ", heartbeat %s ago" % jobs.ago(beat.get("age_s")) if beat else "",
                gpu_figures.pilot_text(pilot.get("gpu"))))
    total = gpu_figures.total_text(site.get("gpu_total"), "the site's pilots, every server")
    return lines + ([total] if total else [])
