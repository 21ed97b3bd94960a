"""The node's settings: one dataclass, filled from flags, then ``RENDERNODE_*`` variables, then defaults."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "RENDERNODE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "rendernode"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: Path = field(default_factory=default_data_dir)
    output_dir: Path | None = None
    scenes_dir: Path | None = None
    scene: str | None = None
    blender: str | None = None
    max_concurrent: int = 1
    threads: int = 0
    queue_limit: int = 1000
    max_frames: int = 10000
    token: str | None = None
    max_upload_mb: int = 2048
    # Seconds Blender gets to exit after SIGTERM before it is killed.
    stop_grace: float = 5.0
    # Submissions per client per minute (0 = unlimited).
    rate_limit: int = 0
    # 1: log every request (aiohttp's access log); 0: only the node's own messages.
    access_log: int = 1

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.output_dir = Path(self.output_dir or self.data_dir / "output").expanduser().resolve()
        self.scenes_dir = Path(self.scenes_dir or self.data_dir / "scenes").expanduser().resolve()

    @property
    def outputs(self) -> Path:
        assert self.output_dir is not None
        return self.output_dir

    @property
    def scenes(self) -> Path:
        assert self.scenes_dir is not None
        return self.scenes_dir

    @property
    def db_path(self) -> Path:
        return self.data_dir / "rendernode.sqlite3"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def blender_executable(self) -> str:
        """``--blender``/``RENDERNODE_BLENDER``, then ``BLENDER_PATH`` (as the seed used), then PATH."""
        return self.blender or os.environ.get("BLENDER_PATH") or shutil.which("blender") or "blender"


_HELP = {
    "host": "address to bind (default 127.0.0.1; anything else exposes Blender to the network)",
    "port": "TCP port (default 3000)",
    "data_dir": "SQLite database, logs and the demo scene live here",
    "output_dir": "rendered frames (default DATA_DIR/output)",
    "scenes_dir": "scenes that jobs may name (default DATA_DIR/scenes)",
    "scene": "default scene: a name in the scenes dir or a path (default: the built-in demo scene)",
    "blender": "Blender executable (default $BLENDER_PATH, then `blender` on PATH)",
    "max_concurrent": "Blender processes run at once (default 1)",
    "threads": "render threads per Blender, 0 = all cores (default 0)",
    "queue_limit": "queued jobs before POST /job answers 503 (default 1000)",
    "max_frames": "largest frame range one job may ask for (default 10000)",
    "token": "require `Authorization: Bearer TOKEN` on every endpoint but /health and static files",
    "max_upload_mb": "largest .blend accepted by POST /scenes, in MiB (default 2048)",
    "stop_grace": "seconds between SIGTERM and SIGKILL when stopping Blender (default 5)",
    "rate_limit": "job submissions per client per minute, 0 = unlimited (default 0)",
    "access_log": "1 logs every HTTP request, 0 turns that off (default 1)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, help=_HELP.get(f.name))


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    text = str(kind)
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    return raw


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(f.name, str(raw))
        except ValueError as exc:
            raise SystemExit(f"rendernode: bad value for {f.name}: {raw!r} ({exc})") from None
    return Settings(**values)  # type: ignore[arg-type]
