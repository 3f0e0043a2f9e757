"""Property-based run over the OpenAPI schema (schemathesis): whatever the input, no 5xx.

Driven with hypothesis directly (schemathesis' pytest plugin does not load under pytest 9).
"""
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from api.app import create_app


def test_no_server_errors_anywhere_in_the_schema(settings, dispatcher, store, session_factory, headers):
    fuzz = settings.model_copy(update={"max_active_jobs_per_tenant": 1000})
    app = create_app(fuzz, dispatcher=dispatcher, store=store, session_factory=session_factory)
    seen: dict[str, set[int]] = {}
    with TestClient(app):  # runs the lifespan; the resources stay on the app
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 10

        for op in operations:
            @given(case=op.as_strategy())
            @hsettings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call(headers={**(case.headers or {}), **headers})
                seen.setdefault(op.label, set()).add(response.status_code)  # noqa: B023 - run within its own iteration
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

            check()
    # the run reached the handlers, not only the validation layer
    assert 200 in seen["GET /v1/jobs"] and 422 in seen["POST /v1/jobs"]
