"""The farm's durable state: nodes, farm jobs, the chunks handed to nodes, and every delivered frame."""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from rendernode.jobs import JobSpec, JobStatus
from rendernode.store import Store

FARM_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id       TEXT PRIMARY KEY,
    url      TEXT NOT NULL UNIQUE,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS farm_jobs (
    num         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    scene       TEXT,
    scene_path  TEXT,
    scene_sha   TEXT,
    engine      TEXT NOT NULL,
    format      TEXT NOT NULL,
    frame_from  INTEGER NOT NULL,
    frame_to    INTEGER NOT NULL,
    chunk_size  INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    frame_from  INTEGER NOT NULL,
    frame_to    INTEGER NOT NULL,
    node_id     TEXT NOT NULL,
    node_job_id TEXT,
    status      TEXT NOT NULL,
    error       TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS chunks_job ON chunks(job_id, status);
CREATE TABLE IF NOT EXISTS farm_frames (
    job_id         TEXT NOT NULL,
    frame          INTEGER NOT NULL,
    node_id        TEXT NOT NULL,
    path           TEXT NOT NULL,
    size           INTEGER NOT NULL,
    render_seconds REAL NOT NULL,
    PRIMARY KEY (job_id, frame)
);
CREATE TABLE IF NOT EXISTS frame_failures (
    job_id  TEXT NOT NULL,
    frame   INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    error   TEXT,
    PRIMARY KEY (job_id, frame, node_id)
);
"""


@dataclass
class FarmJob:
    num: int
    id: str
    status: JobStatus
    scene: str | None
    scene_path: str | None
    scene_sha: str | None
    engine: str
    format: str
    frame_from: int
    frame_to: int
    chunk_size: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None

    @property
    def frames(self) -> list[int]:
        return list(range(self.frame_from, self.frame_to + 1))


@dataclass
class Chunk:
    id: int
    job_id: str
    frame_from: int
    frame_to: int
    node_id: str
    node_job_id: str | None
    status: str  # running, done, failed, cancelled
    error: str | None
    started_at: float
    finished_at: float | None

    @property
    def frames(self) -> list[int]:
        return list(range(self.frame_from, self.frame_to + 1))


@dataclass
class FarmFrame:
    frame: int
    node_id: str
    path: str
    size: int
    render_seconds: float


def _job(row: sqlite3.Row) -> FarmJob:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    return FarmJob(**values)


class FarmStore(Store):
    """The node's one-thread SQLite access, with the farm's tables."""

    schema = FARM_SCHEMA

    # --- nodes ---
    async def add_node(self, url: str) -> tuple[str, bool]:
        def insert(conn: sqlite3.Connection) -> tuple[str, bool]:
            row = conn.execute("SELECT id FROM nodes WHERE url=?", (url,)).fetchone()
            if row:
                return row[0], False
            node_id = "n-" + secrets.token_hex(3)
            conn.execute("INSERT INTO nodes (id, url, added_at) VALUES (?,?,?)", (node_id, url, time.time()))
            return node_id, True

        return await self._run(insert)

    async def remove_node(self, node_id: str) -> bool:
        return bool(await self._run(lambda c: c.execute("DELETE FROM nodes WHERE id=?", (node_id,)).rowcount))

    async def nodes(self) -> list[tuple[str, str]]:
        return await self._run(
            lambda c: [(r[0], r[1]) for r in c.execute("SELECT id, url FROM nodes ORDER BY added_at")]
        )

    # --- jobs ---
    async def create_farm_job(
        self, spec: JobSpec, scene: str | None, scene_path: str | None, scene_sha: str | None, chunk_size: int
    ) -> FarmJob:
        def insert(conn: sqlite3.Connection) -> FarmJob:
            job_id = "f" + secrets.token_urlsafe(9)
            conn.execute(
                "INSERT INTO farm_jobs (id, status, scene, scene_path, scene_sha, engine, format, frame_from,"
                " frame_to, chunk_size, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    JobStatus.QUEUED.value,
                    scene,
                    scene_path,
                    scene_sha,
                    spec.engine,
                    spec.format,
                    spec.frame_from,
                    spec.frame_to,
                    chunk_size,
                    time.time(),
                ),
            )
            return _job(conn.execute("SELECT * FROM farm_jobs WHERE id=?", (job_id,)).fetchone())

        return await self._run(insert)

    async def farm_job(self, job_id: str) -> FarmJob | None:
        def select(conn: sqlite3.Connection) -> FarmJob | None:
            row = conn.execute("SELECT * FROM farm_jobs WHERE id=?", (job_id,)).fetchone()
            return _job(row) if row else None

        return await self._run(select)

    async def farm_jobs(self, limit: int, offset: int, status: str | None = None) -> tuple[list[FarmJob], int]:
        def select(conn: sqlite3.Connection) -> tuple[list[FarmJob], int]:
            where, params = ("WHERE status=?", [status]) if status else ("", [])
            rows = conn.execute(
                f"SELECT * FROM farm_jobs {where} ORDER BY num DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM farm_jobs {where}", params).fetchone()[0]
            return [_job(r) for r in rows], total

        return await self._run(select)

    async def farm_counts_by_status(self) -> dict[str, int]:
        return await self._run(
            lambda c: {r[0]: r[1] for r in c.execute("SELECT status, COUNT(*) FROM farm_jobs GROUP BY status")}
        )

    async def active_farm_jobs(self) -> list[FarmJob]:
        def select(conn: sqlite3.Connection) -> list[FarmJob]:
            rows = conn.execute(
                "SELECT * FROM farm_jobs WHERE status IN (?, ?) ORDER BY num",
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            )
            return [_job(r) for r in rows]

        return await self._run(select)

    async def set_farm_job_status(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        def update(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "UPDATE farm_jobs SET status=?, error=COALESCE(?, error),"
                " started_at=CASE WHEN ?='running' THEN COALESCE(started_at, ?) ELSE started_at END,"
                " finished_at=CASE WHEN ? IN ('completed','failed','cancelled') THEN ? ELSE finished_at END"
                " WHERE id=?",
                (status.value, error, status.value, now, status.value, now, job_id),
            )

        await self._run(update)

    # --- chunks ---
    async def open_chunk(self, job_id: str, frame_from: int, frame_to: int, node_id: str) -> Chunk:
        def insert(conn: sqlite3.Connection) -> Chunk:
            cur = conn.execute(
                "INSERT INTO chunks (job_id, frame_from, frame_to, node_id, status, started_at) VALUES (?,?,?,?,?,?)",
                (job_id, frame_from, frame_to, node_id, "running", time.time()),
            )
            return Chunk(**dict(conn.execute("SELECT * FROM chunks WHERE id=?", (cur.lastrowid,)).fetchone()))

        return await self._run(insert)

    async def set_chunk_node_job(self, chunk_id: int, node_job_id: str) -> None:
        await self._run(lambda c: c.execute("UPDATE chunks SET node_job_id=? WHERE id=?", (node_job_id, chunk_id)))

    async def close_chunk(self, chunk_id: int, status: str, error: str | None = None) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE chunks SET status=?, error=?, finished_at=? WHERE id=?", (status, error, time.time(), chunk_id)
            )
        )

    async def chunks_of(self, job_id: str, status: str | None = None) -> list[Chunk]:
        def select(conn: sqlite3.Connection) -> list[Chunk]:
            sql, params = "SELECT * FROM chunks WHERE job_id=?", [job_id]
            if status:
                sql, params = sql + " AND status=?", [*params, status]
            return [Chunk(**dict(r)) for r in conn.execute(sql + " ORDER BY id", params)]

        return await self._run(select)

    # --- frames ---
    async def add_farm_frame(self, job_id: str, frame: FarmFrame) -> bool:
        """Record a delivered frame; False if it was already recorded (every frame exists exactly once)."""

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO farm_frames (job_id, frame, node_id, path, size, render_seconds)"
                " VALUES (?,?,?,?,?,?)",
                (job_id, frame.frame, frame.node_id, frame.path, frame.size, frame.render_seconds),
            )
            return cur.rowcount == 1

        return await self._run(insert)

    async def farm_frames(self, job_id: str) -> list[FarmFrame]:
        def select(conn: sqlite3.Connection) -> list[FarmFrame]:
            rows = conn.execute(
                "SELECT frame, node_id, path, size, render_seconds FROM farm_frames WHERE job_id=? ORDER BY frame",
                (job_id,),
            )
            return [FarmFrame(**dict(r)) for r in rows]

        return await self._run(select)

    async def farm_frame_counts(self, job_ids: list[str]) -> dict[str, int]:
        def select(conn: sqlite3.Connection) -> dict[str, int]:
            if not job_ids:
                return {}
            marks = ",".join("?" * len(job_ids))
            rows = conn.execute(
                f"SELECT job_id, COUNT(*) FROM farm_frames WHERE job_id IN ({marks}) GROUP BY job_id", job_ids
            )
            return {r[0]: r[1] for r in rows}

        return await self._run(select)

    async def add_frame_failures(self, job_id: str, frames: list[int], node_id: str, error: str | None) -> None:
        await self._run(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO frame_failures (job_id, frame, node_id, error) VALUES (?,?,?,?)",
                [(job_id, f, node_id, error) for f in frames],
            )
        )

    async def frame_failures(self, job_id: str) -> dict[int, dict[str, str | None]]:
        def select(conn: sqlite3.Connection) -> dict[int, dict[str, str | None]]:
            failures: dict[int, dict[str, str | None]] = {}
            for row in conn.execute("SELECT frame, node_id, error FROM frame_failures WHERE job_id=?", (job_id,)):
                failures.setdefault(row[0], {})[row[1]] = row[2]
            return failures

        return await self._run(select)

    async def stats_by_node(self) -> dict[str, dict[str, Any]]:
        def select(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            stats: dict[str, dict[str, Any]] = {}
            for node_id, frames in conn.execute("SELECT node_id, COUNT(*) FROM farm_frames GROUP BY node_id"):
                stats.setdefault(node_id, {})["frames_rendered"] = frames
            for node_id, status, count in conn.execute("SELECT node_id, status, COUNT(*) FROM chunks GROUP BY 1, 2"):
                stats.setdefault(node_id, {})[f"chunks_{status}"] = count
            return stats

        return await self._run(select)
