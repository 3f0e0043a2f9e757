"""/v1/datasets: named datasets, their versions (v1, v2, ..., `latest`) and diffs."""
from __future__ import annotations

from fastapi import APIRouter, Path, Query

from api.deps import Res, Tenant
from shared.datasets import versions as datasets
from shared.datasets.views import DatasetDiff, DatasetList, DatasetVersionList, DatasetVersionView

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

ERRORS = {
    401: {"description": "missing or unknown API key"},
    404: {"description": "no such dataset or version for this tenant"},
    422: {"description": "a field is invalid (the body names it)"},
    503: {"description": "database or object store unavailable"},
}
NAME = Path(max_length=100, description="dataset name")


@router.get("", response_model=DatasetList, responses=ERRORS)
def list_datasets(tenant: Tenant, res: Res) -> DatasetList:
    with res.uow() as uow:
        return datasets.list_datasets(uow, tenant)


@router.get("/{name}/versions", response_model=DatasetVersionList, responses=ERRORS)
def list_versions(tenant: Tenant, res: Res, name: str = NAME) -> DatasetVersionList:
    with res.uow() as uow:
        return datasets.list_versions(uow, tenant, name)


@router.get("/{name}/versions/{version}", response_model=DatasetVersionView, responses=ERRORS)
def get_version(tenant: Tenant, res: Res, name: str = NAME,
                version: str = Path(max_length=12, description="latest, N or vN")) -> DatasetVersionView:
    with res.uow() as uow:
        return datasets.get_version(uow, res.store, res.settings, tenant, name, version)


@router.get("/{name}/diff", response_model=DatasetDiff, responses=ERRORS)
def diff(tenant: Tenant, res: Res, name: str = NAME,
         base: str = Query(max_length=12, description="older version: latest, N or vN"),
         head: str = Query(default="latest", max_length=12, description="newer version: latest, N or vN")) -> DatasetDiff:
    with res.uow() as uow:
        return datasets.diff(uow, tenant, name, base, head)
