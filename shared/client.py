"""A small client of the dsgen REST API (used by `dsgen submit/jobs/pull` and the benchmark)."""
from __future__ import annotations

import io
import re
import time
import uuid
import zipfile
from urllib.parse import quote
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"{message} (HTTP {status})")
        self.status, self.message, self.field = status, message, field


class Client:
    def __init__(self, server: str, api_key: str | None, *, timeout: float = 30.0, transport: Any = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ApiError(0, f"cannot reach {self._http.base_url}: {err}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                message, field = str(body.get("detail", r.text)), body.get("field")
            except ValueError:
                message, field = r.text[:300] or r.reason_phrase, None
            raise ApiError(r.status_code, message, field)
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else None

    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)

    def resolve_job_id(self, ref: str) -> str:
        """A full job id, or a unique prefix of one (the dashboard shows 8 characters)."""
        text = ref.strip().lower()
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
        if not re.fullmatch(r"[0-9a-f][0-9a-f-]{0,35}", text):
            raise ApiError(0, f"JOB_ID: {ref!r} is neither a job id nor the start of one (hex digits)")
        found: list[str] = []
        cursor = None
        while True:
            page = self.jobs(limit=200, cursor=cursor)
            found += [j["id"] for j in page["items"] if j["id"].startswith(text)]
            cursor = page.get("next_cursor")
            if not cursor or len(found) > 5:
                break
        if not found:
            raise ApiError(404, f"no job of this tenant has an id starting with {ref!r}", "job_id")
        if len(found) > 1:
            shown = ", ".join(f[:13] for f in found[:5])
            raise ApiError(409, f"{ref!r} is the start of several job ids ({shown}...); give more characters",
                           "job_id")
        return found[0]

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> dict:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/retry")

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def export(self, job_id: str, fmt: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/exports/{fmt}")

    def datasets(self) -> dict:
        return self._call("GET", "/v1/datasets")

    def versions(self, name: str) -> dict:
        return self._call("GET", f"/v1/datasets/{quote(name, safe='')}/versions")

    def version(self, name: str, version: str = "latest") -> dict:
        return self._call("GET", f"/v1/datasets/{quote(name, safe='')}/versions/{quote(version, safe='')}")

    def diff(self, name: str, base: str, head: str = "latest") -> dict:
        return self._call("GET", f"/v1/datasets/{quote(name, safe='')}/diff", params={"base": base, "head": head})

    def pull_version(self, name: str, version: str, fmt: str, out: Path) -> tuple[dict, list[str]]:
        """Download one export of a dataset version (`latest`, N or vN) into `out`."""
        v = self.version(name, version)
        export = next((e for e in v["exports"] if e["format"] == fmt), None)
        if export is None:
            have = sorted(e["format"] for e in v["exports"])
            raise ApiError(404, f"{name} {v['name']} has no {fmt!r} export (it has {have})", "format")
        return v, self._download(export["url"], fmt, out)

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None, on_progress: Any = None) -> dict:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
            time.sleep(poll_s)

    def pull(self, job_id: str, fmt: str, out: Path) -> list[str]:
        """Download an export archive (presigned URL) and unpack it into `out`."""
        return self._download(self.export(job_id, fmt)["url"], fmt, out)

    def _download(self, url: str, fmt: str, out: Path) -> list[str]:
        try:
            r = httpx.get(url, timeout=300, follow_redirects=True)
        except httpx.HTTPError as err:
            raise ApiError(0, f"cannot download the export: {err}") from None
        if r.status_code != 200:
            raise ApiError(r.status_code, f"download of the {fmt} export failed")
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            root = out.resolve()
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise ApiError(0, f"unsafe path in archive: {name}")
            zf.extractall(out)
            return zf.namelist()
