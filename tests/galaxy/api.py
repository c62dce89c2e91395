"""Just the Galaxy API calls the tests and the bench make (urllib, no dependencies)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.galaxy.server import GalaxySite

ADMIN_EMAIL = "admin@example.org"
TERMINAL = ("ok", "error", "deleted", "deleting", "failed", "skipped")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class GalaxyApi:
    """Just the Galaxy API calls the tests and the bench make (urllib, no dependencies)."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key

    def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "x-api-key": self.key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:2000].decode(errors="replace")
            raise RuntimeError("%s %s: %s %s" % (method, path, exc.code, body)) from exc
        return payload.decode() if raw else json.loads(payload or b"null")

    @classmethod
    def for_new_user(cls, site: GalaxySite) -> GalaxyApi:
        admin = cls(site.url, site.bootstrap_key)
        user = admin.call("POST", "/api/users", {
            "username": "admin", "email": ADMIN_EMAIL, "password": secrets.token_hex(8)})
        return cls(site.url, admin.call("POST", "/api/users/%s/api_key" % user["id"]))

    def history(self, name: str) -> str:
        return str(self.call("POST", "/api/histories", {"name": name})["id"])

    def upload(self, history: str, content: str, name: str = "input.txt") -> str:
        """Paste a text dataset; returns its id once it is ok."""
        out = self.call("POST", "/api/tools/fetch", {"history_id": history, "targets": [{
            "destination": {"type": "hdas"}, "elements": [{
                "src": "pasted", "paste_content": content, "ext": "txt", "name": name}]}]})
        dataset = str(out["outputs"][0]["id"])
        self.wait_dataset(dataset)
        return dataset

    def upload_path(self, history: str, path: Path, ext: str) -> str:
        """Import a server-side file (admins, allow_path_paste); returns its id once ok."""
        out = self.call("POST", "/api/tools/fetch", {"history_id": history, "targets": [{
            "destination": {"type": "hdas"}, "elements": [{
                "src": "path", "path": str(path), "ext": ext, "name": path.name}]}]})
        dataset = str(out["outputs"][0]["id"])
        self.wait_dataset(dataset)
        return dataset

    def upload_many(self, history: str, contents: dict[str, str]) -> dict[str, str]:
        """Paste several text datasets in one upload job; name -> id once all are ok."""
        out = self.call("POST", "/api/tools/fetch", {"history_id": history, "targets": [{
            "destination": {"type": "hdas"}, "elements": [
                {"src": "pasted", "paste_content": text, "ext": "txt", "name": name}
                for name, text in contents.items()]}]})
        ids = {o["name"]: str(o["id"]) for o in out["outputs"]}
        for dataset in ids.values():
            self.wait_dataset(dataset)
        return ids

    def list_collection(self, history: str, name: str, elements: dict[str, str]) -> str:
        """A list collection of existing datasets (identifier -> dataset id)."""
        out = self.call("POST", "/api/dataset_collections", {
            "history_id": history, "type": "dataset_collection", "collection_type": "list",
            "name": name, "copy_elements": False, "element_identifiers": [
                {"name": key, "src": "hda", "id": value} for key, value in elements.items()]})
        return str(out["id"])

    def collection_contents(self, hdca: str) -> dict[str, str]:
        """Element identifier -> dataset content of a list collection."""
        out = self.call("GET", "/api/dataset_collections/%s?instance_type=history" % hdca)
        return {e["element_identifier"]: self.content(str(e["object"]["id"]))
                for e in out["elements"]}

    def metrics(self, job_id: str) -> dict[tuple[str, str], str]:
        """(plugin, name) -> raw value of a job's metrics."""
        return {(m["plugin"], m["name"]): str(m["raw_value"])
                for m in self.call("GET", "/api/jobs/%s/metrics" % job_id)}

    def run_tool(self, history: str, tool: str, inputs: dict[str, Any]) -> tuple[str, str]:
        """Start a tool; returns (job id, first output id)."""
        out = self.call("POST", "/api/tools", {"tool_id": tool, "history_id": history,
                                               "inputs": inputs})
        return str(out["jobs"][0]["id"]), str(out["outputs"][0]["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.call("GET", "/api/jobs/%s?full=true" % job_id))

    def job_state(self, job_id: str) -> str:
        return str(self.call("GET", "/api/jobs/%s" % job_id)["state"])

    def wait_job(self, job_id: str, timeout: float = 60.0,
                 seen: list[str] | None = None) -> dict[str, Any]:
        def done() -> bool:
            state = self.job_state(job_id)
            if seen is not None and (not seen or seen[-1] != state):
                seen.append(state)
            return state in TERMINAL
        wait_until(done, timeout, "job %s to end" % job_id, 0.1)
        return self.job(job_id)

    def wait_dataset(self, dataset: str, timeout: float = 90.0) -> str:
        def state() -> str | None:
            value = str(self.call("GET", "/api/datasets/%s" % dataset)["state"])
            return value if value in ("ok", "error", "failed_metadata") else None
        return str(wait_until(state, timeout, "dataset %s" % dataset, 0.2))

    def content(self, dataset: str) -> str:
        return str(self.call("GET", "/api/datasets/%s/display?preview=false" % dataset,
                             raw=True))

    def cancel(self, job_id: str) -> None:
        self.call("DELETE", "/api/jobs/%s" % job_id)
