"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls_active = Gauge("vg_calls_active", "calls with a live media stream", registry=r)
        self.calls_started = Counter("vg_calls_started", "incoming calls accepted", registry=r)
        self.calls_rejected = Counter(
            "vg_calls_rejected", "incoming calls refused", ["reason"], registry=r
        )
        self.sessions_completed = Counter(
            "vg_sessions_completed",
            "sessions completed by this instance",
            ["end_reason"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "vg_webhook_seconds",
            "webhook handling time",
            ["hook"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_response_seconds = Histogram(
            "vg_turn_response_seconds",
            "end of caller turn to first agent audio frame sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter("vg_barge_ins", "agent answers cut off by the caller", registry=r)
        self.frames_in = Counter("vg_frames_in", "media frames received", registry=r)
        self.frames_out = Counter("vg_frames_out", "media frames sent", registry=r)
        self.stream_errors = Counter(
            "vg_stream_errors", "media streams closed on an error", ["reason"], registry=r
        )
        self.store_errors = Counter("vg_store_errors", "live store (Redis) errors", registry=r)
        self.archive_errors = Counter("vg_archive_errors", "archive write errors", registry=r)
        self.archived = Counter("vg_archived_sessions", "rows written to the archive", registry=r)
        self.archive_backlog = Gauge(
            "vg_archive_backlog", "completed records not yet archived", ["state"], registry=r
        )
        self.loop_lag = Gauge("vg_event_loop_lag_seconds", "event loop scheduling lag", registry=r)
        self.http_requests = Counter(
            "vg_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
