"""The dashboard: one static page with plain JS (no build step) at `/`, talking to the JSON
API with the key the user typed (kept in sessionStorage, sent as a Bearer header, never put
in a URL). Every user-supplied string is inserted as text (never as HTML) by the page."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.deps import Tenant
from shared.jobs import usecases as jobs

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


CSP = ("default-src 'self'; img-src 'self' data: http: https:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class SpecText(BaseModel):
    text: str = Field(max_length=500_000, description="a job spec as YAML or JSON")


class ParsedSpec(BaseModel):
    spec: dict


@router.post("/v1/specs/parse", response_model=ParsedSpec, tags=["jobs"],
             responses={401: {"description": "missing API key"}, 422: {"description": "not YAML/JSON (field: text)"}})
def parse_spec(_tenant: Tenant, body: SpecText) -> ParsedSpec:
    """YAML or JSON text -> the spec object (syntax only; `POST /v1/jobs` validates the fields)."""
    return ParsedSpec(spec=jobs.parse_spec_text(body.text))
