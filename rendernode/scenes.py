"""The scenes a node can render: a directory of .blend files, uploads stored by content hash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os

from rendernode.jobs import InvalidRequest, NotFound, PayloadTooLarge, validate_scene_name

# An uncompressed .blend starts with "BLENDER"; compressed ones with the gzip (pre-3.0) or zstd magic.
BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


@dataclass(frozen=True)
class SceneInfo:
    name: str
    size: int
    sha256: str | None

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class UploadResult:
    scene: SceneInfo
    created: bool


class SceneLibrary:
    def __init__(self, directory: Path, default_scene: str | None, max_upload_bytes: int) -> None:
        self.directory = directory
        self.default_scene = default_scene
        self.max_upload_bytes = max_upload_bytes

    def list(self) -> list[SceneInfo]:
        scenes = []
        for entry in sorted(self.directory.glob("*.blend")):
            if not entry.is_file():
                continue
            stem = entry.stem
            sha = stem if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) else None
            scenes.append(SceneInfo(entry.name, entry.stat().st_size, sha))
        return scenes

    def resolve(self, name: str | None) -> tuple[str, Path]:
        """A job's scene name → (display name, absolute path), refusing anything outside the scenes dir."""
        if name is None:
            name = self.default_scene
            if name is None:
                raise NotFound("no scene given and this node has no default scene")
            if os.sep in name:
                path = Path(name).expanduser().resolve()
                if not path.is_file():
                    raise NotFound(f"the default scene {name} does not exist")
                return path.name, path
        name = validate_scene_name(name)
        path = (self.directory / name).resolve()
        if path.parent != self.directory.resolve() or not path.is_file():
            raise InvalidRequest(f"unknown scene {name!r}; GET /scenes lists this node's scenes", field="scene")
        return name, path

    async def store_upload(self, chunks: AsyncIterator[bytes]) -> UploadResult:
        """Stream an upload to a temporary file while hashing it, then keep it under its SHA-256."""
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".upload-{secrets.token_hex(8)}.partial"
        digest = hashlib.sha256()
        size = 0
        head = b""
        try:
            async with aiofiles.open(partial, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise PayloadTooLarge(f"scene larger than this node's limit of {self.max_upload_bytes} bytes")
                    if len(head) < 8:
                        head += chunk[: 8 - len(head)]
                        if len(head) >= 7 and not head.startswith(BLEND_MAGICS):
                            raise InvalidRequest("not a Blender file: it does not start with a .blend header")
                    digest.update(chunk)
                    await out.write(chunk)
            if size == 0:
                raise InvalidRequest("empty upload: send the .blend file as the request body")
            if not head.startswith(BLEND_MAGICS):
                raise InvalidRequest("not a Blender file: it does not start with a .blend header")
            sha = digest.hexdigest()
            target = self.directory / f"{sha}.blend"
            created = not target.exists()
            if created:
                await aiofiles.os.replace(partial, target)
            return UploadResult(SceneInfo(target.name, size, sha), created)
        finally:
            if partial.exists():
                await asyncio.to_thread(partial.unlink, True)
