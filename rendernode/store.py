"""Jobs and frame results in SQLite.

One connection, used from one dedicated thread: every call is a short
transaction run off the event loop, and serialising them on one thread makes
SQLite's locking a non-issue inside the node.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rendernode.jobs import JobSpec, JobStatus

T = TypeVar("T")
VIEW_CACHE_SIZE = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    num          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,
    scene        TEXT NOT NULL,
    scene_path   TEXT NOT NULL,
    engine       TEXT NOT NULL,
    format       TEXT NOT NULL,
    frame_from   INTEGER NOT NULL,
    frame_to     INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    pid          INTEGER,
    exit_code    INTEGER,
    error        TEXT,
    blender_version TEXT,
    runs         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, num);
CREATE TABLE IF NOT EXISTS frames (
    job_id         TEXT NOT NULL REFERENCES jobs(id),
    frame          INTEGER NOT NULL,
    path           TEXT NOT NULL,
    render_seconds REAL NOT NULL,
    finished_at    REAL NOT NULL,
    PRIMARY KEY (job_id, frame)
);
"""


@dataclass
class JobRecord:
    num: int
    id: str
    status: JobStatus
    scene: str
    scene_path: str
    engine: str
    format: str
    frame_from: int
    frame_to: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    exit_code: int | None
    error: str | None
    blender_version: str | None
    runs: int

    @property
    def frames(self) -> list[int]:
        return list(range(self.frame_from, self.frame_to + 1))

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["status"] = JobStatus(values["status"])
        return cls(**values)


@dataclass
class FrameRecord:
    frame: int
    path: str
    render_seconds: float
    finished_at: float


class Store:
    schema = SCHEMA

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rendernode-sqlite")
        self._conn: sqlite3.Connection | None = None
        # Pollers read the same job again and again; this process is the only writer, so a job's
        # rows can be served from memory until one of its writes completes (see _changed).
        self._views: dict[str, tuple[JobRecord, list[FrameRecord]]] = {}
        self._writes = 0

    def _changed(self, job_id: str) -> None:
        """Called after a write to a job has committed: drop its cached rows."""
        self._views.pop(job_id, None)
        self._writes += 1

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._conn is not None, "store is not open"
        with self._conn:
            return fn(self._conn)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: every commit survives the node being killed; a power cut may lose
            # the last few, which costs at most a re-render of frames whose rows were lost.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(self.schema)
            conn.isolation_level = "DEFERRED"
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, disconnect)
        self._executor.shutdown(wait=True)

    # --- jobs ---
    async def create_job(self, spec: JobSpec, scene: str, scene_path: str) -> JobRecord:
        def insert(conn: sqlite3.Connection) -> JobRecord:
            while True:
                job_id = secrets.token_urlsafe(9)
                try:
                    conn.execute(
                        "INSERT INTO jobs (id, status, scene, scene_path, engine, format, frame_from, frame_to,"
                        " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            job_id,
                            JobStatus.QUEUED.value,
                            scene,
                            scene_path,
                            spec.engine,
                            spec.format,
                            spec.frame_from,
                            spec.frame_to,
                            time.time(),
                        ),
                    )
                    break
                except sqlite3.IntegrityError:
                    continue
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return JobRecord.from_row(row)

        return await self._run(insert)

    async def get_job(self, job_id: str) -> JobRecord | None:
        def select(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return JobRecord.from_row(row) if row else None

        return await self._run(select)

    async def get_job_with_frames(self, job_id: str) -> tuple[JobRecord, list[FrameRecord]] | None:
        cached = self._views.get(job_id)
        if cached is not None:
            return cached
        writes = self._writes
        found = await self._select_job_with_frames(job_id)
        # Cache only if no write completed while we read: the read may predate it.
        if found is not None and self._writes == writes:
            if len(self._views) >= VIEW_CACHE_SIZE:
                self._views.pop(next(iter(self._views)))
            self._views[job_id] = found
        return found

    async def _select_job_with_frames(self, job_id: str) -> tuple[JobRecord, list[FrameRecord]] | None:
        def select(conn: sqlite3.Connection) -> tuple[JobRecord, list[FrameRecord]] | None:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            frames = conn.execute(
                "SELECT frame, path, render_seconds, finished_at FROM frames WHERE job_id=? ORDER BY frame",
                (job_id,),
            ).fetchall()
            return JobRecord.from_row(row), [FrameRecord(**dict(f)) for f in frames]

        return await self._run(select)

    async def list_jobs(self, limit: int, offset: int, status: str | None = None) -> tuple[list[JobRecord], int]:
        def select(conn: sqlite3.Connection) -> tuple[list[JobRecord], int]:
            where, params = ("WHERE status=?", [status]) if status else ("", [])
            rows = conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY num DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
            return [JobRecord.from_row(r) for r in rows], total

        return await self._run(select)

    async def frame_counts(self, job_ids: list[str]) -> dict[str, int]:
        def select(conn: sqlite3.Connection) -> dict[str, int]:
            if not job_ids:
                return {}
            marks = ",".join("?" * len(job_ids))
            rows = conn.execute(
                f"SELECT job_id, COUNT(*) FROM frames WHERE job_id IN ({marks}) GROUP BY job_id", job_ids
            ).fetchall()
            return {r[0]: r[1] for r in rows}

        return await self._run(select)

    async def queued_ids(self) -> list[str]:
        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT id FROM jobs WHERE status=? ORDER BY num", (JobStatus.QUEUED.value,))
            return [r[0] for r in rows]

        return await self._run(select)

    async def requeue_interrupted(self) -> list[tuple[str, int | None]]:
        """Jobs left ``running`` by a node that died go back to the queue, keeping their place.

        Returns each such job's id with the pid its Blender had, so a survivor can be stopped.
        """

        def update(conn: sqlite3.Connection) -> list[tuple[str, int | None]]:
            rows = conn.execute("SELECT id, pid FROM jobs WHERE status=?", (JobStatus.RUNNING.value,)).fetchall()
            conn.execute(
                "UPDATE jobs SET status=?, pid=NULL WHERE status=?", (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
            )
            return [(r[0], r[1]) for r in rows]

        requeued = await self._run(update)
        for job_id, _ in requeued:
            self._changed(job_id)
        return requeued

    async def mark_running(self, job_id: str, pid: int, blender_version: str | None) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status=?, pid=?, blender_version=?, runs=runs+1,"
                " started_at=COALESCE(started_at, ?) WHERE id=?",
                (JobStatus.RUNNING.value, pid, blender_version, time.time(), job_id),
            )

        await self._run(update)
        self._changed(job_id)

    async def mark_queued(self, job_id: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE jobs SET status=?, pid=NULL WHERE id=?", (JobStatus.QUEUED.value, job_id))

        await self._run(update)
        self._changed(job_id)

    async def finish(self, job_id: str, status: JobStatus, exit_code: int | None, error: str | None) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status=?, exit_code=?, error=?, finished_at=? WHERE id=?",
                (status.value, exit_code, error, time.time(), job_id),
            )

        await self._run(update)
        self._changed(job_id)

    async def cancel_if_queued(self, job_id: str) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status=?, finished_at=? WHERE id=? AND status=?",
                (JobStatus.CANCELLED.value, time.time(), job_id, JobStatus.QUEUED.value),
            )
            return cur.rowcount == 1

        cancelled = await self._run(update)
        self._changed(job_id)
        return cancelled

    async def counts_by_status(self) -> dict[str, int]:
        def select(conn: sqlite3.Connection) -> dict[str, int]:
            return {r[0]: r[1] for r in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

        return await self._run(select)

    # --- frames ---
    async def add_frame(self, job_id: str, frame: int, path: str, render_seconds: float) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO frames (job_id, frame, path, render_seconds, finished_at) VALUES (?,?,?,?,?)",
                (job_id, frame, path, render_seconds, time.time()),
            )

        await self._run(insert)
        self._changed(job_id)

    async def frames_of(self, job_id: str) -> list[FrameRecord]:
        def select(conn: sqlite3.Connection) -> list[FrameRecord]:
            rows = conn.execute(
                "SELECT frame, path, render_seconds, finished_at FROM frames WHERE job_id=? ORDER BY frame", (job_id,)
            ).fetchall()
            return [FrameRecord(**dict(r)) for r in rows]

        return await self._run(select)

    async def drop_frames(self, job_id: str, frames: list[int]) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM frames WHERE job_id=? AND frame=?", [(job_id, f) for f in frames])

        await self._run(delete)
        self._changed(job_id)
