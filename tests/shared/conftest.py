from __future__ import annotations

import pytest

from tests.support.services import moto_s3_server, postgres_database


@pytest.fixture(scope="session")
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint():
    with moto_s3_server() as url:
        yield url
