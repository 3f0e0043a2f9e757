"""The concurrency limiter refuses early (503 + Retry-After) instead of queueing."""
from __future__ import annotations

import asyncio

import httpx

from api.limiter import ConcurrencyLimit


def _slow_app(release: asyncio.Event, started: list):
    async def app(scope, receive, send):
        started.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def test_requests_past_the_limit_get_503_with_retry_after_at_once_and_health_still_answers():
    async def scenario():
        release, started = asyncio.Event(), []
        limiter = ConcurrencyLimit(_slow_app(release, started), max_in_flight=2, retry_after_s=3)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limiter), base_url="http://t") as c:
            held = [asyncio.create_task(c.get(f"/v1/jobs/{i}")) for i in range(2)]
            while len(started) < 2:
                await asyncio.sleep(0.01)
            refused = await asyncio.wait_for(c.get("/v1/jobs/x"), timeout=2)
            health = asyncio.create_task(c.get("/healthz"))
            while len(started) < 3:
                await asyncio.sleep(0.01)
            release.set()
            answered = await asyncio.gather(*held, health)
            after = await c.get("/v1/jobs/y")
        return refused, answered, after, limiter.in_flight

    refused, answered, after, in_flight = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert "capacity" in refused.json()["detail"]
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert after.status_code == 200 and in_flight == 0


def _revoke(session_factory, key):
    from sqlalchemy import update

    from shared.db.models import ApiKey, utcnow
    from shared.db.session import UnitOfWork
    from shared.tenants import api_keys as auth

    with UnitOfWork(session_factory) as uow:
        uow.session.execute(update(ApiKey).where(ApiKey.key_hash == auth.hash_key(key)).values(revoked_at=utcnow()))


def test_a_looked_up_key_is_trusted_for_the_cache_time_only(settings, dispatcher, store, session_factory):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.db.session import UnitOfWork
    from shared.tenants import api_keys as auth

    for ttl, after_revoke in ((3600.0, 200), (0.0, 401)):
        with UnitOfWork(session_factory) as uow:
            _, key = auth.create_api_key(uow.session, f"cache-{ttl}")
        headers = {"Authorization": f"Bearer {key}"}
        app = create_app(settings.model_copy(update={"api_key_cache_s": ttl}), dispatcher=dispatcher, store=store,
                         session_factory=session_factory)
        with TestClient(app) as c:
            assert c.get("/v1/jobs", headers=headers).status_code == 200
            _revoke(session_factory, key)
            assert c.get("/v1/jobs", headers=headers).status_code == after_revoke
        app = create_app(settings, dispatcher=dispatcher, store=store, session_factory=session_factory)
        with TestClient(app) as c:  # another process (nothing cached) refuses it at once
            assert c.get("/v1/jobs", headers=headers).status_code == 401
