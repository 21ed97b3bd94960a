"""Spreads farm jobs over nodes in chunks, follows each chunk, and survives nodes that fail or vanish.

Chunks are cut on demand: a node with a free slot gets the next contiguous run
of frames that are neither done, in flight, nor already failed on that node.
Each chunk is followed over the node's WebSocket (polling with Retry-After when
the socket drops), and every frame is downloaded and size-checked before it
counts. A failed or lost chunk gives its unfinished frames back to the queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from rendernode.events import EventHub
from rendernode.farm.nodes import FrameDownloadError, NodeLink, NodeLost
from rendernode.farm.store import Chunk, FarmFrame, FarmJob, FarmStore
from rendernode.jobs import (
    FORMATS,
    Conflict,
    InvalidRequest,
    JobSpec,
    JobStatus,
    NotFound,
    queued_event,
    validate_scene_name,
)

log = logging.getLogger(__name__)

# A frame fails the job once it has failed on this many different nodes; a node that fails
# this many chunks of a job gets no more of that job.
MAX_FRAME_NODES = 3
MAX_NODE_CHUNK_FAILURES = 3
NODES_EVENT = "_nodes"
TERMINAL_EVENTS = {"job_completed", "job_failed", "job_cancelled"}


class ChunkFailed(Exception):
    pass


@dataclass(eq=False)
class ChunkRun:
    job_id: str
    node: NodeLink
    frames: list[int]
    chunk: Chunk | None = None
    task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"{self.frames[0]}-{self.frames[-1]}"


@dataclass(eq=False)
class JobState:
    job: FarmJob
    done: dict[int, float] = field(default_factory=dict)  # frame -> render seconds
    runs: set[ChunkRun] = field(default_factory=set)
    failures: dict[int, dict[str, str | None]] = field(default_factory=dict)  # frame -> node -> error
    node_failures: Counter[str] = field(default_factory=Counter)
    ended: bool = False

    def in_flight(self) -> set[int]:
        return {f for run in self.runs for f in run.frames}

    def blocked(self, node_id: str) -> bool:
        return self.node_failures[node_id] >= MAX_NODE_CHUNK_FAILURES

    def next_run(self, node_id: str, size: int) -> list[int]:
        """The next contiguous frames this node may take (never one that already failed there)."""
        busy = self.in_flight()

        def eligible(frame: int) -> bool:
            return frame not in self.done and frame not in busy and node_id not in self.failures.get(frame, {})

        frames: list[int] = []
        for frame in self.job.frames:
            if eligible(frame):
                frames.append(frame)
                if len(frames) == size:
                    break
            elif frames:
                break
        return frames

    def pending(self) -> list[int]:
        busy = self.in_flight()
        return [f for f in self.job.frames if f not in self.done and f not in busy]


# Upper bound of an adaptive chunk, so one node never holds a large share of a long job hostage.
MAX_CHUNK = 50
# A node whose pace is not known yet gets a short first chunk: two frames give one pace sample.
# It may get its next chunk once its current one is down to this many frames.
PROBE_CHUNK = 2
# Each adaptive chunk is this fraction of a node's fair share of the outstanding frames (1 = all of it).
GUIDED_FACTOR = 1.0


def guided_chunk_size(remaining: int, slots: int, speed_ratio: float = 1.0) -> int:
    """Guided self-scheduling: each chunk takes a node's fair share of what is left.

    Early chunks are long (Blender's start-up is paid rarely), the last ones
    short (no node holds the tail). ``speed_ratio`` (farm's average seconds per
    frame over this node's) shrinks a slow node's chunks and grows a fast one's.
    """
    size = remaining / (GUIDED_FACTOR * max(slots, 1)) * speed_ratio
    return max(1, min(MAX_CHUNK, math.ceil(size)))


class FarmScheduler:
    def __init__(
        self,
        store: FarmStore,
        hub: EventHub,
        output_dir: Path,
        *,
        node_urls: list[str],
        chunk_size: int = 0,
        node_token: str | None = None,
        health_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.output_dir = output_dir
        self.node_urls = node_urls
        self.chunk_size = chunk_size
        self.node_token = node_token
        self.health_interval = health_interval
        self.nodes: dict[str, NodeLink] = {}
        self.jobs: dict[str, JobState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False

    # --- lifecycle ---
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for url in self.node_urls:
            await self.store.add_node(url.rstrip("/"))
        for node_id, url in await self.store.nodes():
            self.nodes[node_id] = NodeLink(node_id, url, self._session, self.node_token)
        await self._check_nodes()
        for job in await self.store.active_farm_jobs():
            await self._resume(job)
        self._loops = [
            asyncio.create_task(self._health_loop(), name="farm-health"),
            asyncio.create_task(self._dispatch_loop(), name="farm-dispatch"),
        ]
        self.wake()

    async def _resume(self, job: FarmJob) -> None:
        """Rebuild a job's state after a restart; reattach to chunks still running on their nodes."""
        state = JobState(job)
        state.done = {f.frame: f.render_seconds for f in await self.store.farm_frames(job.id)}
        state.failures = await self.store.frame_failures(job.id)
        for chunk in await self.store.chunks_of(job.id):
            if chunk.status == "failed":
                state.node_failures[chunk.node_id] += 1
        self.jobs[job.id] = state
        for chunk in await self.store.chunks_of(job.id, "running"):
            node = self.nodes.get(chunk.node_id)
            if node is None or chunk.node_job_id is None:
                await self.store.close_chunk(chunk.id, "failed", "the orchestrator restarted before the node took it")
                continue
            self._start_run(state, ChunkRun(job.id, node, chunk.frames, chunk))
        log.info("resumed farm job %s: %d of %d frames done", job.id, len(state.done), len(job.frames))

    async def close(self) -> None:
        """Stop following; chunks keep rendering on their nodes and are reattached on the next start."""
        self._closing = True
        tasks = list(self._loops) + [r.task for s in self.jobs.values() for r in s.runs if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def wake(self) -> None:
        self._wake.set()

    # --- nodes ---
    async def add_node(self, url: str) -> tuple[NodeLink, bool]:
        assert self._session is not None
        node_id, created = await self.store.add_node(url.rstrip("/"))
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeLink(node_id, url.rstrip("/"), self._session, self.node_token)
            await node.check()
            self._publish_node(node)
            self.wake()
        return node, created

    async def remove_node(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r} in this farm")
        node.removed = True
        await self.store.remove_node(node_id)
        del self.nodes[node_id]
        # Its chunks are withdrawn; their unfinished frames go back to the queue.
        for state in self.jobs.values():
            for run in list(state.runs):
                if run.node is node and run.task is not None:
                    run.task.cancel()
                    if run.chunk is not None:
                        await self.store.close_chunk(run.chunk.id, "cancelled", "node removed from the farm")
                        if run.chunk.node_job_id:
                            await node.cancel(run.chunk.node_job_id)
        self._publish_node(node, "node_removed")

    def _publish_node(self, node: NodeLink, kind: str | None = None) -> None:
        self.hub.publish(NODES_EVENT, kind or f"node_{node.state}", node=node.as_json())

    async def _check_nodes(self) -> None:
        nodes = list(self.nodes.values())
        changed = await asyncio.gather(*(n.check() for n in nodes))
        for node, moved in zip(nodes, changed, strict=True):
            if moved:
                log.info("node %s (%s) is %s", node.id, node.url, node.state)
                self._publish_node(node)
                if node.state == "up":
                    while node.abandoned:
                        await node.cancel(node.abandoned.pop())
                    self.wake()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self._check_nodes()

    # --- jobs ---
    async def submit(self, spec: JobSpec, scene: str | None, scene_path: str | None, scene_sha: str | None) -> FarmJob:
        # 0 = adaptive: chunk sizes are picked at each hand-out from what is left and each node's pace.
        size = self.chunk_size
        job = await self.store.create_farm_job(spec, scene, scene_path, scene_sha, size)
        self.jobs[job.id] = JobState(job)
        self.hub.publish(job.id, "job_queued", **queued_event(job), chunk_size=size)
        self.wake()
        return job

    async def cancel(self, job_id: str) -> None:
        state = self.jobs.get(job_id)
        if state is None or state.ended:
            job = await self.store.farm_job(job_id)
            if job is None:
                raise NotFound(f"no farm job {job_id!r}")
            raise Conflict(f"farm job {job_id} already ended as {job.status.value}")
        await self._end_job(state, JobStatus.CANCELLED, "cancelled by request")

    async def _end_job(self, state: JobState, status: JobStatus, error: str | None) -> None:
        if state.ended:
            return
        state.ended = True
        # Chunks still out are stopped on their nodes; their followers then see the node job end
        # and close them (one still being submitted cancels itself once the node answers).
        for run in list(state.runs):
            if run.chunk is not None and run.chunk.node_job_id and status is not JobStatus.COMPLETED:
                await run.node.cancel(run.chunk.node_job_id)
        await self.store.set_farm_job_status(state.job.id, status, error)
        kind = {
            JobStatus.COMPLETED: "job_completed",
            JobStatus.FAILED: "job_failed",
            JobStatus.CANCELLED: "job_cancelled",
        }[status]
        self.hub.publish(state.job.id, kind, error=error, frames_done=len(state.done), exit_code=None)
        self.jobs.pop(state.job.id, None)
        self.wake()

    def progress(self, job_id: str) -> dict[str, Any] | None:
        state = self.jobs.get(job_id)
        if state is None:
            return None
        total = len(state.job.frames)
        left = total - len(state.done)
        times = list(state.done.values())
        slots = max(sum(n.capacity for n in self.nodes.values() if n.state == "up"), 1)
        eta = (sum(times) / len(times)) * left / slots if times else None
        return {
            "percent": round(100.0 * len(state.done) / total, 2),
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "chunks_running": [{"node": r.node.id, "frames": r.label} for r in state.runs],
        }

    # --- dispatching ---
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:  # never let one bad pass stop scheduling
                log.exception("dispatch failed")

    def _slots(self) -> int:
        return sum(n.capacity for n in self.nodes.values() if n.state == "up")

    async def _dispatch(self) -> None:
        for node in list(self.nodes.values()):
            while node.free_slots(self._prefetch(node)) > 0:
                picked = self._pick(node)
                if picked is None:
                    break
                state, frames = picked
                self._start_run(state, ChunkRun(state.job.id, node, frames))
        for state in list(self.jobs.values()):
            await self._fail_if_stuck(state)

    def _pace_ratio(self, node: NodeLink) -> float | None:
        """The farm's average seconds per frame over this node's (above 1: faster than average)."""
        paces = [n.seconds_per_frame for n in self.nodes.values() if n.seconds_per_frame and n.state == "up"]
        if not node.seconds_per_frame or not paces:
            return None
        return (sum(paces) / len(paces)) / node.seconds_per_frame

    def _prefetch(self, node: NodeLink) -> int:
        """Once a node's pace is known it may hold one more chunk in its own queue, so its next Blender
        starts the moment the last one exits; chunk sizing keeps that from over-committing it."""
        return 1 if self._pace_ratio(node) is not None else 0

    def _chunk_size(self, state: JobState, node: NodeLink) -> int:
        """Frames to hand this node now; 0 when it already holds its share of this job."""
        committed = sum(1 for run in state.runs if run.node is node for f in run.frames if f not in state.done)
        if state.job.chunk_size:
            return state.job.chunk_size
        ratio = self._pace_ratio(node)
        if ratio is None:
            # Pace unknown: a quarter of a guided chunk, at least two frames (two arrivals give one pace sample).
            guided = guided_chunk_size(len(state.job.frames) - len(state.done), self._slots())
            return max(PROBE_CHUNK, math.ceil(guided / 4)) if committed == 0 else 0
        if committed > PROBE_CHUNK:
            return 0  # the next chunk is queued only when the current one is nearly done, sized to what is left
        outstanding = len(state.job.frames) - len(state.done)
        return max(guided_chunk_size(outstanding, self._slots(), ratio) - committed, 0)

    def _pick(self, node: NodeLink) -> tuple[JobState, list[int]] | None:
        for state in self.jobs.values():
            if state.ended or state.blocked(node.id):
                continue
            size = self._chunk_size(state, node)
            frames = state.next_run(node.id, size) if size else []
            if frames:
                return state, frames
        return None

    async def _fail_if_stuck(self, state: JobState) -> None:
        """Fail a job whose remaining frames no node may take any more (all blocked or already failed there)."""
        if state.ended or state.runs or not self.nodes:
            return
        for frame in state.pending():
            tried = state.failures.get(frame, {})
            if all(state.blocked(n) or n in tried for n in self.nodes):
                error = next(iter(tried.values()), None) or "every node failed"
                await self._end_job(state, JobStatus.FAILED, f"frame {frame} cannot be rendered by any node: {error}")
                return

    def _start_run(self, state: JobState, run: ChunkRun) -> None:
        state.runs.add(run)
        run.node.active[id(run)] = run.label
        run.task = asyncio.create_task(self._run_chunk(state, run), name=f"chunk-{run.job_id}-{run.label}")

    async def _run_chunk(self, state: JobState, run: ChunkRun) -> None:
        job, node = state.job, run.node
        try:
            if run.chunk is None:
                run.chunk = await self.store.open_chunk(job.id, run.frames[0], run.frames[-1], node.id)
            if run.chunk.node_job_id is None:
                body: dict[str, Any] = {
                    "from": run.frames[0],
                    "to": run.frames[-1],
                    "engine": job.engine,
                    "format": job.format,
                }
                if job.scene_path and job.scene_sha:
                    body["scene"] = await node.ensure_scene(Path(job.scene_path), job.scene_sha)
                answer = await node.submit(body)
                run.chunk.node_job_id = answer["id"]
                await self.store.set_chunk_node_job(run.chunk.id, answer["id"])
                if state.ended:
                    await node.cancel(answer["id"])
                if job.status is JobStatus.QUEUED:
                    job.status = JobStatus.RUNNING
                    await self.store.set_farm_job_status(job.id, JobStatus.RUNNING)
                    self.hub.publish(
                        job.id,
                        "job_started",
                        pid=None,
                        blender_version=node.blender_version,
                        frames={"total": len(job.frames), "done": len(state.done)},
                    )
            self.hub.publish(job.id, "chunk_started", node=node.id, frames=run.label, node_job=run.chunk.node_job_id)
            final = await self._follow(state, run, run.chunk.node_job_id)
            if state.ended and any(f not in state.done for f in run.frames):
                await self.store.close_chunk(run.chunk.id, "cancelled", "the farm job ended")
                return
            await self._collect(state, run, final)
            missing = [f for f in run.frames if f not in state.done]
            if missing:
                raise ChunkFailed(
                    final.get("error") or f"the node's job ended {final.get('status')} without frame {missing[0]}"
                )
            await self.store.close_chunk(run.chunk.id, "done")
            self.hub.publish(job.id, "chunk_done", node=node.id, frames=run.label)
        except (ChunkFailed, NodeLost, FrameDownloadError) as exc:
            await self._chunk_failed(state, run, str(exc), lost=isinstance(exc, NodeLost))
        except Exception as exc:  # a bug must cost one chunk (and count against it), not loop forever
            log.exception("chunk %s of %s crashed", run.label, job.id)
            await self._chunk_failed(state, run, f"internal error: {exc}", lost=False)
        finally:
            state.runs.discard(run)
            node.active.pop(id(run), None)
            if not self._closing:
                self.wake()

    async def _follow(self, state: JobState, run: ChunkRun, node_job_id: str) -> dict[str, Any]:
        """Relay the node job's events until it ends; returns its final body."""
        node, job_id = run.node, state.job.id
        try:
            async for event in node.events(node_job_id):
                kind = event.get("type")
                if kind == "snapshot":
                    await self._collect(state, run, event["job"])
                    if event["job"]["status"] in ("completed", "failed", "cancelled"):
                        break
                elif kind in ("frame_started", "frame_progress"):
                    relayed = {k: v for k, v in event.items() if k not in ("type", "job_id", "seq", "gseq", "ts")}
                    # The node's job percent and ETA are its chunk's; the farm's are the whole job's.
                    progress = self.progress(job_id) or {}
                    relayed["job_percent"] = progress.get("percent")
                    relayed["eta_seconds"] = progress.get("eta_seconds")
                    self.hub.publish(job_id, kind, node=node.id, **relayed)
                elif kind == "frame_done":
                    await self._fetch_frame(state, run, event["frame"], event["url"], event["render_seconds"])
                elif kind == "warning":
                    self.hub.publish(job_id, "warning", node=node.id, message=event.get("message"))
                elif kind in TERMINAL_EVENTS:
                    break
        except NodeLost as exc:
            log.warning("lost the event stream of %s on %s (%s); polling", node_job_id, node.url, exc)
        return await self._poll_until_done(state, run, node_job_id)

    async def _poll_until_done(self, state: JobState, run: ChunkRun, node_job_id: str) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                status, body, retry = await run.node.job(node_job_id)
                failures = 0
            except NodeLost:
                failures += 1
                if failures >= 3 or run.node.state == "down":
                    raise
                await asyncio.sleep(1.0)
                continue
            if status == 404:
                raise ChunkFailed(f"{run.node.url} no longer knows job {node_job_id}")
            await self._collect(state, run, body)
            if status == 200:
                return body
            await asyncio.sleep(min(retry, 5.0))

    async def _collect(self, state: JobState, run: ChunkRun, node_job: dict[str, Any]) -> None:
        for result in node_job.get("results", []):
            if result["frame"] in run.frames and result["frame"] not in state.done:
                await self._fetch_frame(state, run, result["frame"], result["url"], result["render_seconds"])

    async def _fetch_frame(self, state: JobState, run: ChunkRun, frame: int, url: str, seconds: float) -> None:
        job = state.job
        if frame in state.done or state.ended:
            return
        directory = self.output_dir / job.id
        directory.mkdir(parents=True, exist_ok=True)
        destination = directory / f"frame_{frame:05d}.{FORMATS[job.format]}"
        size = await run.node.download(url, destination)
        if not await self.store.add_farm_frame(job.id, FarmFrame(frame, run.node.id, str(destination), size, seconds)):
            return
        state.done[frame] = seconds
        run.node.note_frame(time.monotonic())
        self.wake()  # the node's pace and the job's remaining work changed: maybe hand out a chunk
        progress = self.progress(job.id) or {}
        self.hub.publish(
            job.id,
            "frame_done",
            frame=frame,
            node=run.node.id,
            url=f"/job/{job.id}/frames/{frame}",
            render_seconds=seconds,
            frames_done=len(state.done),
            job_percent=progress.get("percent"),
            eta_seconds=progress.get("eta_seconds"),
        )
        if len(state.done) == len(job.frames):
            await self._end_job(state, JobStatus.COMPLETED, None)

    async def _chunk_failed(self, state: JobState, run: ChunkRun, error: str, *, lost: bool) -> None:
        job, node = state.job, run.node
        missing = [f for f in run.frames if f not in state.done]
        log.warning("chunk %s of %s failed on %s: %s", run.label, job.id, node.url, error)
        if run.chunk is not None:
            await self.store.close_chunk(run.chunk.id, "failed", error)
            if not lost and run.chunk.node_job_id:
                await node.cancel(run.chunk.node_job_id)
        if lost:
            if run.chunk is not None and run.chunk.node_job_id:
                # A node that comes back would resume this job; it is cancelled then (see _check_nodes).
                node.abandoned.append(run.chunk.node_job_id)
            if node.state != "down":
                node.state, node.last_error = "down", error
                self._publish_node(node)
        else:
            # A node that answered but failed: its frames are marked failed there, and it earns a strike.
            await self.store.add_frame_failures(job.id, missing, node.id, error)
            for frame in missing:
                state.failures.setdefault(frame, {})[node.id] = error
            state.node_failures[node.id] += 1
        self.hub.publish(job.id, "chunk_failed", node=node.id, frames=run.label, error=error, lost=lost)
        dead = [f for f in missing if len(state.failures.get(f, {})) >= MAX_FRAME_NODES]
        if dead:
            await self._end_job(state, JobStatus.FAILED, f"frame {dead[0]} failed on {MAX_FRAME_NODES} nodes: {error}")


def scene_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def resolve_scene(scenes_dir: Path, name: str | None) -> tuple[str | None, str | None, str | None]:
    """(name, path, sha256) of a farm job's scene; all None means each node's own default scene."""
    if name is None:
        return None, None, None
    name = validate_scene_name(name)
    path = (scenes_dir / name).resolve()
    if path.parent != scenes_dir.resolve() or not path.is_file():
        raise InvalidRequest(f"unknown scene {name!r}; GET /scenes lists the farm's scenes", field="scene")
    return name, str(path), await asyncio.to_thread(scene_sha, path)
