"""WebSocket channels: snapshot then stream with no gap, resume with ?since=, eviction, origin and token checks."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from conftest import NodeFactory, wait_terminal

from rendernode.events import EventHub
from rendernode.keys import HUB

TERMINAL_EVENTS = {"job_completed", "job_failed", "job_cancelled"}


def hub_of(client: TestClient) -> EventHub:
    app = client.server.app
    assert app is not None
    return app[HUB]


async def follow(client: TestClient, path: str) -> list[dict[str, Any]]:
    """Everything a subscriber sees until its job ends."""
    seen: list[dict[str, Any]] = []
    async with client.ws_connect(path) as ws:
        async for msg in ws:
            event = json.loads(msg.data)
            seen.append(event)
            if event["type"] in TERMINAL_EVENTS:
                break
            if event["type"] == "snapshot" and event["job"]["status"] in ("completed", "failed", "cancelled"):
                break
    return seen


async def test_job_socket_gives_a_snapshot_then_every_event_in_order(node: TestClient, fake_env: Any) -> None:
    fake_env(frame_seconds=0.2)
    job = await (await node.post("/job", json={"from": 1, "to": 5})).json()
    events = await follow(node, f"/job/{job['id']}/ws")
    snapshot, stream = events[0], events[1:]
    assert snapshot["type"] == "snapshot" and snapshot["job"]["id"] == job["id"]
    assert [e["seq"] for e in stream] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(stream)))
    done = [e for e in stream if e["type"] == "frame_done"]
    already = snapshot["job"]["frames"]["done"]
    assert [e["frame"] for e in done] == list(range(already + 1, 6))
    assert all(e["url"] == f"/job/{job['id']}/frames/{e['frame']}" for e in done)
    assert stream[-1]["type"] == "job_completed"
    progress = [e for e in stream if e["type"] == "frame_progress"]
    assert progress and all({"sample", "samples", "percent", "remaining_seconds", "job_percent"} <= e.keys()
                            for e in progress)


async def test_no_gap_between_snapshot_and_stream_under_concurrent_publishing(node: TestClient) -> None:
    hub = hub_of(node)
    stop = asyncio.Event()

    async def publisher() -> None:
        while not stop.is_set():
            hub.publish("synthetic", "frame_progress", frame=1, percent=1.0)
            # ~1,000 events a second: far above Blender's pace, below the eviction threshold.
            await asyncio.sleep(0.001)

    task = asyncio.create_task(publisher())
    try:
        for _ in range(10):
            async with node.ws_connect("/ws") as ws:
                snapshot = json.loads((await ws.receive()).data)
                received = [json.loads((await ws.receive()).data) for _ in range(20)]
            assert snapshot["type"] == "snapshot"
            gseqs = [e["gseq"] for e in received]
            assert gseqs == list(range(snapshot["gseq"] + 1, snapshot["gseq"] + 21))
    finally:
        stop.set()
        await task


async def test_reconnect_with_since_gets_exactly_the_missed_events(node: TestClient) -> None:
    hub = hub_of(node)
    job = await (await node.post("/job", json={"from": 1, "to": 1})).json()
    await wait_terminal(node, job["id"])
    last = hub.job_seq(job["id"])
    for n in range(5):
        hub.publish(job["id"], "warning", message=f"missed {n}")
    async with node.ws_connect(f"/job/{job['id']}/ws?since={last}") as ws:
        replayed = [json.loads((await ws.receive()).data) for _ in range(5)]
    assert [e["message"] for e in replayed] == [f"missed {n}" for n in range(5)]
    assert [e["seq"] for e in replayed] == list(range(last + 1, last + 6))

    # Too old for the replay buffer, or from before a restart: a fresh snapshot instead.
    hub.replay_per_job = 3
    hub.forget(job["id"])
    async with node.ws_connect(f"/job/{job['id']}/ws?since=1") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "snapshot"
    async with node.ws_connect(f"/job/{job['id']}/ws?since=999999") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "snapshot"
    async with node.ws_connect("/ws?since=0") as ws:
        first = json.loads((await ws.receive()).data)
        assert first["type"] in ("snapshot", "job_queued")
    bad = await node.get("/ws?since=abc")
    assert bad.status == 400


async def test_a_stalled_subscriber_is_evicted_without_slowing_the_others(node: TestClient) -> None:
    hub = hub_of(node)
    hub.subscriber_queue = 50
    payload = "x" * 16_384
    healthy_seen: list[int] = []

    async with node.ws_connect("/ws") as stalled, node.ws_connect("/ws") as healthy:
        await stalled.receive()  # snapshot; then this client stops reading
        await healthy.receive()

        async def read_healthy() -> None:
            async for msg in healthy:
                event = json.loads(msg.data)
                healthy_seen.append(event["gseq"])
                if event.get("last"):
                    return

        reader = asyncio.create_task(read_healthy())
        first = hub.global_seq + 1
        sent = 0
        while hub.evictions == 0 and sent < 20_000:
            hub.publish("flood", "warning", message=payload)
            sent += 1
            await asyncio.sleep(0.0005)
        assert hub.evictions == 1, "the stalled subscriber was never evicted"
        hub.publish("flood", "warning", message="end", last=True)
        await asyncio.wait_for(reader, 30)

        closed_with = None
        async for msg in stalled:
            if msg.type == aiohttp.WSMsgType.CLOSE:
                closed_with = msg.data
        closed_with = closed_with or stalled.close_code
    assert closed_with == 1013
    assert healthy_seen == list(range(first, hub.global_seq + 1)), "the healthy subscriber lost events"
    assert hub.subscriber_count == 0


async def test_cross_origin_handshakes_are_refused(node: TestClient) -> None:
    host = f"{node.host}:{node.port}"
    evil = await node.get("/ws", headers={"Origin": "http://evil.example", "Connection": "Upgrade",
                                          "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert evil.status == 403
    async with node.ws_connect("/ws", origin=f"http://{host}") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "snapshot"


async def test_token_is_required_on_sockets_when_configured(make_node: NodeFactory) -> None:
    client = await make_node(token="s3cret")
    try:
        async with client.ws_connect("/ws"):
            raise AssertionError("connected without a token")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    async with client.ws_connect("/ws?token=s3cret") as ws:
        assert json.loads((await ws.receive()).data)["type"] == "snapshot"
    async with client.ws_connect("/ws", headers={"Authorization": "Bearer s3cret"}) as ws:
        assert json.loads((await ws.receive()).data)["type"] == "snapshot"
    assert (await client.get("/jobs")).status == 401
    assert (await client.get("/jobs", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/health")).status == 200
    assert (await client.get("/")).status == 200


async def test_following_a_real_blender_render_sees_every_frame_in_order(
    make_node: NodeFactory, real_blender: str, demo_scene: Path, tmp_path: Path
) -> None:
    scenes = tmp_path / "data" / "scenes"
    scenes.mkdir(parents=True)
    shutil.copy(demo_scene, scenes / "demo.blend")
    client = await make_node(blender=real_blender, scene="demo.blend")
    async with client.ws_connect("/ws") as ws:
        snapshot = json.loads((await ws.receive()).data)
        assert snapshot["type"] == "snapshot" and snapshot["jobs"] == []
        job = await (await client.post("/job", json={"from": 1, "to": 4})).json()
        events: list[dict[str, Any]] = []
        async for msg in ws:
            event = json.loads(msg.data)
            events.append(event)
            if event["type"] in TERMINAL_EVENTS:
                break
    assert all(e["job_id"] == job["id"] for e in events)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["job_queued", "job_started"] and kinds[-1] == "job_completed"
    assert [e["frame"] for e in events if e["type"] == "frame_done"] == [1, 2, 3, 4]
    assert [e["frame"] for e in events if e["type"] == "frame_started"] == [1, 2, 3, 4]
    started = next(e for e in events if e["type"] == "job_started")
    assert started["blender_version"].startswith("3.") or started["blender_version"][0].isdigit()
    samples = [e for e in events if e["type"] == "frame_progress" and e["samples"]]
    assert samples, "no per-sample progress from Cycles"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_the_hub_forgets_ended_jobs_beyond_its_window_but_never_a_live_one() -> None:
    hub = EventHub(tracked_jobs=3)
    hub.publish("live", "job_started")
    for n in range(10):
        hub.publish(f"done-{n}", "job_queued")
        hub.publish(f"done-{n}", "job_completed")
    hub.publish("live", "frame_done", frame=1)
    assert hub.job_seq("live") == 2  # never reset while the job runs
    assert [hub.job_seq(f"done-{n}") for n in range(10)] == [0] * 7 + [2, 2, 2]
    assert hub.replay_since("done-0", 1) is None  # forgotten: a reconnecting client gets a snapshot
    assert hub.replay_since("done-9", 1) is not None
