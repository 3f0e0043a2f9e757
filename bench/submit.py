"""Submit benchmark: wall time of `POST /v1/jobs` (the domain call, one transaction on this
machine's Postgres) for a big job, i.e. writing the job and its shard rows and the response.
Prints one JSON object.

    python bench/submit.py [--images 100000] [--shard-size 8] [--repeats 3]

Each repeat submits a fresh job in a fresh tenant; the median and every time are reported.
The dispatcher records instead of publishing (Redis publishing is a separate cost).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from shared.config import Settings
    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.jobs import usecases as jobs
    from shared.tenants import repository as tenants_repo
    from tests.support.fakes import RecordingDispatcher
    from tests.support.services import postgres_database

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = {"model": "builtin:tiny-random", "classes": ["cat"], "num_images": args.images,
            "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 8}, "export": {"formats": ["coco"]}}
    times = []
    with postgres_database() as url:
        settings = Settings(database_url=url, storage="local", shard_size=args.shard_size,
                            max_images_per_job=max(args.images, 1))
        engine = make_engine(url)
        factory = make_session_factory(engine)
        for _ in range(args.repeats):
            with UnitOfWork(factory) as uow:
                tenant = tenants_repo.get_or_create_tenant(uow.session, f"bench-{uuid.uuid4().hex[:8]}").id
            dispatcher = RecordingDispatcher()
            started = time.perf_counter()
            with UnitOfWork(factory) as uow:
                view, _ = jobs.submit_job(uow, dispatcher, settings, tenant, spec)
            times.append(time.perf_counter() - started)
            assert len(dispatcher.sent) == view.progress.shards.get("queued", 0) == -(-args.images // args.shard_size)
        engine.dispose()
    print(json.dumps({"bench": "submit", "images": args.images, "shards": -(-args.images // args.shard_size),
                      "median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}))


if __name__ == "__main__":
    main()
