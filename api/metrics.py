"""Prometheus metrics of the API (prefix `dsgen_`; route templates as labels, never job ids).
Each app gets its own registry, so several apps in one process (tests) do not collide.

Besides the API's own counters, `ServiceCollector` reads the service's state at scrape time
(`shared.metrics.stats`): jobs per status, samples, shard durations and retries, queue depths,
workers alive and images/s. They are gauges: they are read from rows, which deleting a job
or retrying a shard removes or resets.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

log = logging.getLogger(__name__)


class ServiceCollector:
    def __init__(self, state: Any):
        self._state = state  # the app's state: its resources exist once the lifespan started

    def describe(self) -> list:
        return []  # collected at scrape time only (describe must not query the database)

    def collect(self):  # noqa: ANN201
        from shared.metrics.stats import service_stats

        res = getattr(self._state, "resources", None)
        up = GaugeMetricFamily("dsgen_database_up", "1 when the last scrape could read the database")
        if res is None:
            return
        try:
            with res.uow() as uow:
                st = service_stats(uow, res.dispatcher)
        except Exception as err:  # noqa: BLE001 - a scrape never fails because the database is down
            log.warning("metrics: service state unavailable: %s", err)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("dsgen_jobs", "jobs per status (all tenants)", labels=["status"])
        for status, n in st.jobs.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("dsgen_samples_generated", "samples generated and stored (all tenants)", value=st.samples)
        yield GaugeMetricFamily("dsgen_images_per_second", "samples written per second over the last minute",
                                value=st.images_per_s)
        hist = HistogramMetricFamily("dsgen_shard_duration_seconds", "run time of succeeded shards (last attempt)")
        buckets = [(repr(float(b)), c) for b, c in st.shard_buckets] + [("+Inf", st.shard_count)]
        hist.add_metric([], buckets, st.shard_seconds)
        yield hist
        yield GaugeMetricFamily("dsgen_shard_retries", "shard attempts beyond the first (stored shards)",
                                value=st.shard_retries)
        depth = GaugeMetricFamily("dsgen_queue_depth", "messages waiting per queue", labels=["queue"])
        for queue, n in st.queue_depth.items():
            if n is not None:
                depth.add_metric([queue], n)
        yield depth
        if st.workers_alive is not None:
            yield GaugeMetricFamily("dsgen_workers_alive", "workers answering a ping", value=st.workers_alive)


class ApiMetrics:
    def __init__(self, state: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dsgen_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("dsgen_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.jobs_submitted = Counter("dsgen_jobs_submitted", "jobs created", registry=self.registry)
        self.unavailable = Counter("dsgen_unavailable", "requests answered 503, per component", ["component"],
                                   registry=self.registry)
        if state is not None:
            self.registry.register(ServiceCollector(state))


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status. A plain ASGI
    middleware: Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`) runs each request
    in an extra task with memory streams, which cost a status poll about a fifth of its CPU."""

    def __init__(self, app: Any, metrics: Callable[[], ApiMetrics]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router put the matched route here
            m = self.metrics()
            m.requests.labels(scope["method"], route, str(status[0])).inc()
            m.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
