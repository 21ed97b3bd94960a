"""The job queue and the Blender processes it runs.

The supervisor owns one task per running job and the child process inside it:
jobs wait FIFO for a free slot, each run streams Blender's output through the
parser into events and frame rows, and stopping (cancel, shutdown) always ends
in terminate → grace period → kill → reap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles

from rendernode import blender
from rendernode.blender import BlenderInfo
from rendernode.config import Settings
from rendernode.events import EventHub
from rendernode.jobs import Conflict, JobSpec, JobStatus, NotFound, QueueFull, queued_event
from rendernode.progress import FrameTracker, LineSplitter, parse_line
from rendernode.scenes import SceneLibrary
from rendernode.store import JobRecord, Store

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


def frame_url(job_id: str, frame: int) -> str:
    return f"/job/{job_id}/frames/{frame}"


@dataclass(eq=False)
class Run:
    """One job's turn on the node: its Blender process and live progress."""

    job_id: str
    tracker: FrameTracker | None = None
    proc: asyncio.subprocess.Process | None = None
    cancel_requested: bool = False


class Supervisor:
    def __init__(self, settings: Settings, store: Store, hub: EventHub, scenes: SceneLibrary) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.scenes = scenes
        self.blender_info: BlenderInfo | None = None
        self.blender_error: str | None = None
        self._queue: deque[str] = deque()
        self._reserved = 0
        self._runs: dict[str, Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._recent_frame_seconds: deque[float] = deque(maxlen=50)

    # --- lifecycle ---
    async def start(self) -> None:
        requeued = await self.store.requeue_interrupted()
        for job_id, pid in requeued:
            log.warning("re-queued job %s, interrupted when the node last stopped", job_id)
            if pid is not None:
                blender.kill_leftover(pid, str(self.settings.outputs / job_id))
        self._queue.extend(await self.store.queued_ids())
        self._pump()

    async def close(self) -> None:
        """Stop every Blender this node started; interrupted jobs stay queued for the next start."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- queries ---
    @property
    def running_count(self) -> int:
        return len(self._tasks)

    @property
    def queued_count(self) -> int:
        return len(self._queue)

    def queue_position(self, job_id: str) -> int | None:
        try:
            return self._queue.index(job_id) + 1
        except ValueError:
            return None

    def average_frame_seconds(self) -> float | None:
        if not self._recent_frame_seconds:
            return None
        return sum(self._recent_frame_seconds) / len(self._recent_frame_seconds)

    def live_progress(self, job_id: str) -> dict[str, Any] | None:
        run = self._runs.get(job_id)
        if run is None or run.tracker is None:
            return None
        tracker = run.tracker
        return {
            "current_frame": tracker.current,
            "current_frame_percent": tracker.current_percent if tracker.current is not None else None,
            "current_status": tracker.current_status or None,
            "percent": tracker.percent(),
            "eta_seconds": tracker.eta_seconds(time.monotonic()),
        }

    def retry_after(self, job: JobRecord, frames_done: int) -> int:
        """How long a poller should wait: a fraction of the expected time left, 1–30 s."""
        expected: float | None
        live = self.live_progress(job.id)
        if live is not None and live["eta_seconds"] is not None:
            expected = float(live["eta_seconds"])
        else:
            average = self.average_frame_seconds()
            left = len(job.frames) - frames_done
            position = self.queue_position(job.id) or 0
            expected = average * (left + position * left) if average is not None else None
        if expected is None:
            return 2
        # A quarter of the remaining time: at most ~4 polls per job, but never a stale answer for long.
        return int(min(max(math.ceil(expected / 4), 1), 30))

    # --- commands ---
    async def submit(self, spec: JobSpec) -> JobRecord:
        scene_name, scene_path = self.scenes.resolve(spec.scene)
        if len(self._queue) + self._reserved >= self.settings.queue_limit:
            raise QueueFull(
                f"the queue is full ({self.settings.queue_limit} jobs waiting); try again later",
                retry_after=self._queue_full_retry_after(),
            )
        self._reserved += 1
        try:
            job = await self.store.create_job(spec, scene_name, str(scene_path))
        finally:
            self._reserved -= 1
        self._queue.append(job.id)
        self.hub.publish(job.id, "job_queued", **queued_event(job), position=len(self._queue))
        self._pump()
        return job

    def _queue_full_retry_after(self) -> int:
        average = self.average_frame_seconds() or 5.0
        return int(min(max(math.ceil(average * 4), 1), 60))

    async def cancel(self, job_id: str) -> JobStatus:
        if job_id in self._queue:
            if await self.store.cancel_if_queued(job_id):
                self._discard_queued(job_id)
                self.hub.publish(job_id, "job_cancelled", error="cancelled while queued")
                return JobStatus.CANCELLED
        run = self._runs.get(job_id)
        task = self._tasks.get(job_id)
        if run is not None and task is not None:
            run.cancel_requested = True
            if run.proc is not None:
                await blender.stop_process(run.proc, self.settings.stop_grace)
            await asyncio.wait({task})
            job = await self.store.get_job(job_id)
            assert job is not None
            return job.status
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} on this node")
        if job.status.terminal:
            raise Conflict(f"job {job_id} already ended as {job.status.value}")
        # Queued in the database but not in memory cannot happen while running; be explicit anyway.
        raise Conflict(f"job {job_id} is {job.status.value} and cannot be cancelled right now")

    def _discard_queued(self, job_id: str) -> None:
        try:
            self._queue.remove(job_id)
        except ValueError:
            pass

    # --- running ---
    def _pump(self) -> None:
        while self._queue and len(self._tasks) < self.settings.max_concurrent and not self._closing:
            job_id = self._queue.popleft()
            run = Run(job_id)
            self._runs[job_id] = run
            task = asyncio.create_task(self._run_guarded(run), name=f"job-{job_id}")
            self._tasks[job_id] = task
            task.add_done_callback(functools.partial(self._on_run_done, job_id))

    def _on_run_done(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._runs.pop(job_id, None)
        if not self._closing:
            self._pump()

    async def _run_guarded(self, run: Run) -> None:
        try:
            await self._run(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail one job, not wedge the queue
            log.exception("job %s crashed the runner", run.job_id)
            await self._finish(run.job_id, JobStatus.FAILED, None, f"internal error: {exc}")

    async def _run(self, run: Run) -> None:
        job = await self.store.get_job(run.job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            return
        if self.blender_info is None:
            await self._finish(job.id, JobStatus.FAILED, None, self.blender_error or "Blender is not available")
            return
        saved = await self.store.frames_of(job.id)
        # A frame counts as done only if its file survived; the rest are rendered again.
        done = {f.frame: f.render_seconds for f in saved if Path(f.path).is_file()}
        stale = [f.frame for f in saved if f.frame not in done]
        if stale:
            await self.store.drop_frames(job.id, stale)
        tracker = FrameTracker(job.frames, done)
        run.tracker = tracker
        missing = tracker.missing()
        if not missing:
            await self._finish(job.id, JobStatus.COMPLETED, 0, None)
            return
        out_dir = self.settings.outputs / job.id
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            await self._finish(job.id, JobStatus.FAILED, None, f"cannot create the output directory {out_dir}: {exc}")
            return
        argv = blender.render_argv(
            self.blender_info.executable,
            job.scene_path,
            engine=job.engine,
            output_pattern=str(out_dir / blender.OUTPUT_PATTERN),
            file_format=job.format,
            frame_start=missing[0],
            frame_end=job.frame_to,
            threads=self.settings.threads,
            version_major=self.blender_info.major,
        )
        if run.cancel_requested:
            await self._finish(job.id, JobStatus.CANCELLED, None, "cancelled before Blender started")
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            await self._finish(job.id, JobStatus.FAILED, None, f"cannot start Blender: {exc}")
            return
        run.proc = proc
        if run.cancel_requested:  # cancelled while the process was starting
            await blender.stop_process(proc, self.settings.stop_grace)
        try:
            await self.store.mark_running(job.id, proc.pid, self.blender_info.version)
            self.hub.publish(
                job.id,
                "job_started",
                pid=proc.pid,
                blender_version=self.blender_info.version,
                frames={"total": tracker.total, "done": tracker.done_count},
                resumed_from=missing[0] if done else None,
            )
            await self._publish_all(job.id, tracker.start(time.monotonic()))
            log_path = self.settings.logs_dir / f"{job.id}.log"
            async with aiofiles.open(log_path, "ab") as log_file:
                await log_file.write(f"$ {' '.join(argv)}\n".encode())
                await self._follow_output(job.id, proc, tracker, log_file)
            returncode = await proc.wait()
        except asyncio.CancelledError:
            # The node is stopping: end Blender, and leave the job queued so the next start resumes it.
            await asyncio.shield(self._interrupt(job.id, proc))
            raise
        finally:
            if proc.returncode is None:
                await blender.stop_process(proc, self.settings.stop_grace)
        await self._conclude(run, job, tracker, returncode)

    async def _interrupt(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        await blender.stop_process(proc, self.settings.stop_grace)
        await self.store.mark_queued(job_id)

    async def _follow_output(
        self, job_id: str, proc: asyncio.subprocess.Process, tracker: FrameTracker, log_file: Any
    ) -> None:
        assert proc.stdout is not None
        splitter = LineSplitter()
        while True:
            chunk = await proc.stdout.read(READ_CHUNK)
            lines = splitter.feed(chunk) if chunk else splitter.finish()
            for line in lines:
                now = time.monotonic()
                await self._publish_all(job_id, tracker.feed(parse_line(line), now))
            if not chunk:
                await self._publish_all(job_id, tracker.flush(time.monotonic()))
                return
            # Events first, log second: the log is for people, the events for live progress.
            await log_file.write(chunk)

    async def _publish_all(self, job_id: str, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event.pop("type")
            if kind == "frame_done":
                path = event.pop("path")
                if not path or not Path(path).is_file():
                    continue  # Blender said it saved a frame we cannot find; do not count it
                await self.store.add_frame(job_id, event["frame"], path, event["render_seconds"])
                self._recent_frame_seconds.append(event["render_seconds"])
                event["url"] = frame_url(job_id, event["frame"])
            self.hub.publish(job_id, kind, **event)

    async def _conclude(self, run: Run, job: JobRecord, tracker: FrameTracker, returncode: int) -> None:
        saved = {f.frame for f in await self.store.frames_of(job.id)}
        missing = [f for f in job.frames if f not in saved]
        error: str | None = None
        if run.cancel_requested:
            status, error = JobStatus.CANCELLED, "cancelled by request"
        elif returncode < 0:
            status = JobStatus.FAILED
            frame = f" while rendering frame {tracker.current}" if tracker.current is not None else ""
            error = tracker.last_error or f"Blender was killed by {blender.signal_name(returncode)}{frame}"
        elif returncode != 0:
            status = JobStatus.FAILED
            error = tracker.last_error or f"Blender exited with code {returncode}"
        elif missing:
            # Blender exits 0 after many failures (no camera, unwritable output): trust the files, not the code.
            status = JobStatus.FAILED
            error = tracker.last_error or (
                f"Blender exited normally but saved only {len(saved)} of {len(job.frames)} frames"
                f" (first missing: {missing[0]})"
            )
        else:
            status = JobStatus.COMPLETED
        await self._finish(job.id, status, returncode, error)

    async def _finish(self, job_id: str, status: JobStatus, exit_code: int | None, error: str | None) -> None:
        await self.store.finish(job_id, status, exit_code, error)
        kind = {
            JobStatus.COMPLETED: "job_completed",
            JobStatus.FAILED: "job_failed",
            JobStatus.CANCELLED: "job_cancelled",
        }[status]
        frames = await self.store.frames_of(job_id)
        self.hub.publish(job_id, kind, exit_code=exit_code, error=error, frames_done=len(frames))
