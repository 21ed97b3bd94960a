"""Progress latency: from a line written to Blender's stdout to the event in a WebSocket client's hands.

A stand-in Blender replays a captured Cycles log (frame after frame) and stamps
each line's write time; N clients subscribe to /ws and stamp each event's
arrival. The node under test is a real ``rendernode serve`` process.

    python bench/progress_latency.py [--subscribers 1,100,1000] [--frames 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import aiohttp
from _node import Node, percentile

GOAL_P99_MS = 10.0


def line_key(event: dict) -> tuple[int, str] | None:
    if event["type"] == "frame_progress" and event.get("sample") is not None:
        return event["frame"], str(event["sample"])
    if event["type"] == "frame_done":
        return event["frame"], "saved"
    return None


class RawSubscriber(asyncio.Protocol):
    """A minimal WebSocket client that only timestamps bytes as they arrive; frames are decoded afterwards.

    Decoding and JSON parsing in the measuring process would add its own queueing
    to every figure; this measures when the event reaches the client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.request = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.chunks: list[tuple[float, bytes]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.time(), data))

    def events(self) -> list[tuple[float, dict]]:
        """(arrival time of the frame's last byte, event) for each text frame received."""
        data = b"".join(chunk for _, chunk in self.chunks)
        ends, total = [], 0
        for at, chunk in self.chunks:
            total += len(chunk)
            ends.append((total, at))
        position = data.index(b"\r\n\r\n") + 4
        out, cursor = [], 0
        while position + 2 <= len(data):
            length = data[position + 1] & 0x7F
            header = 2
            if length == 126:
                length, header = struct.unpack(">H", data[position + 2:position + 4])[0], 4
            elif length == 127:
                length, header = struct.unpack(">Q", data[position + 2:position + 10])[0], 10
            frame_end = position + header + length
            if frame_end > len(data):
                break
            if data[position] & 0x0F == 1:
                while ends[cursor][0] < frame_end:
                    cursor += 1
                out.append((ends[cursor][1], json.loads(data[position + header:frame_end])))
            position = frame_end
        return out


async def connect_subscribers(node: Node, count: int) -> list[RawSubscriber]:
    """``count`` raw subscribers on /ws, returned once every handshake is answered and its snapshot sent."""
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        _, protocol = await loop.create_connection(
            lambda: RawSubscriber("127.0.0.1", node.port), "127.0.0.1", node.port
        )
        clients.append(protocol)
    while sum(1 for c in clients if c.chunks) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return clients


async def run(node: Node, subscribers: int, frames: int, stamps: Path) -> dict[str, list[float]]:
    clients = await connect_subscribers(node, subscribers)
    async with aiohttp.ClientSession() as session:
        async with session.post(node.url + "/job", json={"from": 1, "to": frames}) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        while True:
            async with session.get(f"{node.url}/job/{job['id']}") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let the last events reach every subscriber
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    written: dict[tuple[int, str], float] = {}
    for line in stamps.read_text().splitlines():
        frame, key, at = line.split()
        written.setdefault((int(frame), key), float(at))
    latencies: dict[str, list[float]] = {"frame_progress": [], "frame_done": []}
    for client in clients:
        for at, event in client.events():
            key = line_key(event)
            if key is not None and key in written:
                latencies[event["type"]].append((at - written[key]) * 1000.0)
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", default="1,100,1000")
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    counts = [int(c) for c in args.subscribers.split(",")]
    print(f"progress latency, line written -> event received; {args.frames} frames of a replayed Cycles log")
    print(f"{'subscribers':>11} {'events':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99/goal':>9}"
          f" {'done p50':>9} {'done p99':>9}")
    for count in counts:
        with tempfile.NamedTemporaryFile(prefix="stamps-", delete=False) as handle:
            stamps = Path(handle.name)
        node = Node({"RENDERNODE_BENCH_STAMPS": str(stamps)})
        try:
            by_type = await run(node, count, args.frames, stamps)
        finally:
            node.stop()
            os.unlink(stamps)
        latencies = by_type["frame_progress"] + by_type["frame_done"]
        done = by_type["frame_done"]
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"{count:>11} {len(latencies):>8} {p50:>8.2f} {p99:>8.2f} {max(latencies):>8.2f}"
              f" {p99 / GOAL_P99_MS:>9.2f} {percentile(done, 50):>9.2f} {percentile(done, 99):>9.2f}", flush=True)
    print(f"goal: p99 under {GOAL_P99_MS:.0f} ms with 100 subscribers (p99/goal < 1)")


if __name__ == "__main__":
    asyncio.run(main())
