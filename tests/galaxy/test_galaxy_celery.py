"""``metadata_strategy: celery`` with ``retry_metadata_internally: false``, no broker service.

Galaxy 26's Celery needs no broker service here: its default broker is the
SQLAlchemy transport on Galaxy's own SQLite database (``amqp_internal_connection``),
its result backend an SQLite file. It does need a worker: ``task_always_eager``
cannot run Galaxy's tasks (``set_job_metadata`` and ``fetch_data`` run their work
in the worker's fork pool, made when a worker starts), so the test starts one
``celery --app galaxy.celery worker`` beside the server, as gravity would. Galaxy's
metadata task then runs after the job, as Galaxy's local runner asks for it; an
output whose metadata it did not set would end ``failed_metadata``.

``enable_celery_tasks`` is server-wide in Galaxy (every upload would go through the worker),
so this is the one module with a server of its own (tests/galaxy/fixtures.py
``celery_starting``: started in the background at the session's first test), stopped when
this module ends.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.galaxy.server import GALAXY_VENV, GalaxyApi, GalaxySite, Starting

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def celery_api(celery_starting: Starting) -> Iterator[GalaxyApi]:
    site = celery_starting.wait()
    worker = start_worker(site)
    try:
        yield GalaxyApi.for_new_user(site)
    finally:  # the worker first, then the server: not idle for the rest of the session
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        site.stop()
        site.stop_pilots()


def start_worker(site: GalaxySite) -> subprocess.Popen[bytes]:
    """One Celery worker for Galaxy's queues (gravity's command line), logging beside Galaxy."""
    env = dict(site.env, GALAXY_CONFIG_FILE=str(site.gx / "galaxy.yml"))
    with (site.root / "celery.log").open("ab") as out:
        return subprocess.Popen(
            [str(GALAXY_VENV / "bin" / "celery"), "--app", "galaxy.celery", "worker",
             "--concurrency", "1", "--pool", "threads", "--loglevel", "INFO",
             "--queues", "celery,galaxy.internal,galaxy.external"],
            cwd=str(site.gx), env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)


def test_celery_metadata_in_both_modes(celery_api: GalaxyApi) -> None:
    api = celery_api
    history = api.history("celery metadata")
    ids = api.upload_many(history, {"a.txt": "one\ntwo\n", "b.txt": "three\n"})
    a, b = ({"src": "hda", "id": ids[name]} for name in ("a.txt", "b.txt"))
    runs = {tool: api.call("POST", "/api/tools", {
        "tool_id": tool, "history_id": history, "inputs": inputs}) for tool, inputs in {
        "gx_repeat_cat": {"queries_0|input": a, "queries_1|input": b},  # Galaxy-script mode
        "gx_repeat_cat_local": {"queries_0|input": a, "queries_1|input": b},
        "hpc_shout": {"input": a, "suffix": "!"},  # template mode
    }.items()}
    for tool, run in runs.items():
        job = api.wait_job(str(run["jobs"][0]["id"]), 300)
        assert job["state"] == "ok", (tool, job.get("info"), job.get("job_stderr"))
    shown = {tool: api.call("GET", "/api/datasets/%s" % run["outputs"][0]["id"])
             for tool, run in runs.items()}
    assert {tool: s["state"] for tool, s in shown.items()} == dict.fromkeys(runs, "ok")
    assert api.content(str(runs["gx_repeat_cat"]["outputs"][0]["id"])) == api.content(
        str(runs["gx_repeat_cat_local"]["outputs"][0]["id"]))
    assert shown["gx_repeat_cat"]["metadata_data_lines"] == \
        shown["gx_repeat_cat_local"]["metadata_data_lines"] == 5  # really set, not just "ok"
    assert shown["hpc_shout"]["metadata_data_lines"] == 3
