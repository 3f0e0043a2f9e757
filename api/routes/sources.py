"""/v1/sources: upload a source archive (real masks/images a method reads), read its metadata."""
from __future__ import annotations

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from api.deps import Res, Tenant
from shared.sources import archives as sources
from shared.sources.archives import SourceTooLarge, SourceView

router = APIRouter(prefix="/v1/sources", tags=["sources"])

ERRORS = {
    401: {"description": "missing or unknown API key"},
    413: {"description": "archive too large, too many files, or it unpacks too far (archive bomb)"},
    422: {"description": "not a zip/tar archive, unsafe member paths, or no recognisable source data"},
    503: {"description": "object store unavailable"},
}


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never buffered past it)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise SourceTooLarge(f"archive: larger than {limit} bytes on this server", field="archive")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("", response_model=SourceView, status_code=201, responses=ERRORS)
async def upload_source(tenant: Tenant, res: Res, request: Request) -> SourceView:
    """Body: the archive's bytes (zip, tar or tar.gz). Name the returned id in a spec as
    `source: {upload: <id>}` (or `upload:<id>` for a segmenter folder)."""
    data = await _read_limited(request, res.settings.max_source_bytes)
    return await run_in_threadpool(sources.upload_source, res.store, res.settings, tenant, data)


@router.get("/{upload_id}", response_model=SourceView, responses={**ERRORS, 404: {"description": "no such upload for this tenant"}})
def get_source(tenant: Tenant, res: Res, upload_id: str = Path(max_length=64)) -> SourceView:
    return sources.get_source(res.store, tenant, upload_id)
