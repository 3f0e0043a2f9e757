"""Prometheus metrics of the API (prefix `dsgen_`; route templates as labels, never job ids).
Each app gets its own registry, so several apps in one process (tests) do not collide."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dsgen_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("dsgen_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.jobs_submitted = Counter("dsgen_jobs_submitted", "jobs created", registry=self.registry)
        self.unavailable = Counter("dsgen_unavailable", "requests answered 503, per component", ["component"],
                                   registry=self.registry)
