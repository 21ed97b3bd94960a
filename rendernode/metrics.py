"""``GET /metrics`` in Prometheus text format, one registry per application.

Counters and the render-time histogram follow the event stream (the hub calls
``observe`` for every event); gauges are read from live state at scrape time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Render times of a frame run from sub-second previews to hours.
FRAME_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))

Refresher = Callable[["Metrics"], Awaitable[None]]


class Metrics:
    def __init__(self, prefix: str = "rendernode") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Gauge(f"{prefix}_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.frames = Counter(f"{prefix}_frames_rendered", "Frames rendered and saved", registry=self.registry)
        self.frame_seconds = Histogram(
            f"{prefix}_frame_render_seconds", "Render time per frame", buckets=FRAME_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(f"{prefix}_queue_length", "Jobs waiting for a slot", registry=self.registry)
        self.running = Gauge(f"{prefix}_running_blenders", "Blender processes running", registry=self.registry)
        self.subscribers = Gauge(f"{prefix}_websocket_subscribers", "Open event subscriptions",
                                 registry=self.registry)
        self.node_up = Gauge(f"{prefix}_farm_node_up", "1 when the farm sees the node healthy", ["node"],
                             registry=self.registry)
        self.node_chunks = Gauge(f"{prefix}_farm_node_chunks", "Chunks per node by outcome", ["node", "status"],
                                 registry=self.registry)
        self.node_frames = Gauge(f"{prefix}_farm_node_frames", "Frames delivered per node", ["node"],
                                 registry=self.registry)
        self.refresh: Refresher | None = None

    @classmethod
    def following(cls, hub: Any, refresh: Refresher) -> Metrics:
        """Metrics that count the hub's events and read their gauges with ``refresh`` at each scrape."""
        metrics = cls()
        hub.listeners.append(metrics.observe)
        metrics.refresh = refresh
        return metrics

    def observe(self, event: dict[str, Any]) -> None:
        if event["type"] == "frame_done":
            self.frames.inc()
            seconds = event.get("render_seconds")
            if isinstance(seconds, (int, float)):
                self.frame_seconds.observe(seconds)

    def set_jobs(self, counts: dict[str, int]) -> None:
        for status in ("queued", "running", "completed", "failed", "cancelled"):
            self.jobs.labels(status).set(counts.get(status, 0))


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if metrics.refresh is not None:
        await metrics.refresh(metrics)
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
