from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rendernode.app import create_app
from rendernode.blender import ensure_demo_scene, probe_version
from rendernode.config import Settings

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
REPO = TESTS.parent
BLEND_HEADER = b"BLENDER-v304RENDB\x00" + b"\x00" * 64


def real_blender_path() -> str:
    path = os.environ.get("BLENDER_PATH") or shutil.which("blender")
    if not path:
        pytest.fail("these tests need the real Blender: install it (apt-get install blender) or set BLENDER_PATH")
    return path


@pytest.fixture(scope="session")
def fake_blender(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An executable that behaves like Blender, driven by FAKE_BLENDER_* variables."""
    wrapper = tmp_path_factory.mktemp("fake-blender") / "blender"
    wrapper.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(TESTS / 'fake_blender.py')!r}\n"
        f"runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="session")
def real_blender() -> str:
    return real_blender_path()


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory: pytest.TempPathFactory, real_blender: str) -> Path:
    """The demo scene, built once per test session by the real Blender."""
    base = tmp_path_factory.mktemp("demo")

    async def build() -> Path:
        info = await probe_version(real_blender)
        return await ensure_demo_scene(info, base / "scenes", base)

    return asyncio.run(build())


def stub_scene(data_dir: Path) -> None:
    """A data dir whose scenes dir holds ``stub.blend``: enough of a scene for the stand-in Blender."""
    (data_dir / "scenes").mkdir(parents=True, exist_ok=True)
    (data_dir / "scenes" / "stub.blend").write_bytes(BLEND_HEADER)


def make_settings(data_dir: Path, blender: str, **overrides: Any) -> Settings:
    """Settings for a node whose default scene is a stub .blend (enough for the stand-in Blender)."""
    stub_scene(data_dir)
    values: dict[str, Any] = {"data_dir": data_dir, "blender": blender, "scene": "stub.blend", "stop_grace": 2.0}
    values.update(overrides)
    return Settings(**values)


NodeFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def set_env(**values: Any) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"FAKE_BLENDER_{key.upper()}", str(value))

    return set_env


@pytest.fixture
async def make_node(aiohttp_client: Any, tmp_path: Path, fake_blender: str) -> AsyncIterator[NodeFactory]:
    async def factory(data_dir: Path | None = None, **overrides: Any) -> TestClient:
        settings = make_settings(data_dir or tmp_path / "data", overrides.pop("blender", fake_blender), **overrides)
        client: TestClient = await aiohttp_client(create_app(settings))
        return client

    yield factory


@pytest.fixture
async def node(make_node: NodeFactory) -> TestClient:
    return await make_node()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last answer: {last!r}")


async def wait_terminal(client: TestClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        response = await client.get(f"/job/{job_id}")
        body = await response.json()
        return body if response.status == 200 else None

    result: dict[str, Any] = await eventually(done, timeout)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class NodeProcess:
    """A real ``python -m rendernode serve`` process on a free loopback port."""

    def __init__(
        self, data_dir: Path, blender: str, env: dict[str, str] | None = None, *extra: str, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"node-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "rendernode",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--blender",
            blender,
            "--stop-grace",
            "2",
            *extra,
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"node not ready:\n{self.log_path.read_text()}")

    def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


def start_nodes(
    count: int,
    tmp_path: Path,
    blender: str,
    registry: list[NodeProcess],
    env: dict[str, str] | None = None,
    envs: list[dict[str, str]] | None = None,
    scene: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[NodeProcess]:
    """``count`` node processes (data dirs node0, node1, ...), ready; a stub scene unless ``scene`` is given."""
    nodes = []
    for index in range(count):
        data = tmp_path / f"node{index}"
        if scene is None:
            stub_scene(data)
        flags = ["--scene", scene or "stub.blend", *extra]
        node = NodeProcess(data, blender, {**(env or {}), **(envs[index] if envs else {})}, *flags)
        registry.append(node)
        nodes.append(node)
    for node in nodes:
        node.wait_ready()
    return nodes


@pytest.fixture
def node_processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()
        proc._log.close()
