"""Hostile input: schemathesis against the shipped OpenAPI document, and raw-socket junk.

Every operation of the node and of the farm gets generated requests (valid and
invalid); every answer must be documented, never a 5xx, and the servers must
keep serving afterwards.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from conftest import REPO, NodeProcess, free_port, stub_scene
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

SPEC = REPO / "static" / "openapi.yaml"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
EXAMPLES = 25


@pytest.fixture
def fuzz_node(tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]) -> NodeProcess:
    data = tmp_path / "node"
    stub_scene(data)
    node = NodeProcess(data, fake_blender, {"FAKE_BLENDER_FRAME_SECONDS": "0.01"}, "--scene", "stub.blend",
                       "--max-frames", "50")
    node_processes.append(node)
    node.wait_ready()
    return node


@pytest.fixture
def fuzz_farm(tmp_path: Path, fuzz_node: NodeProcess) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "farm.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rendernode", "farm", "--port", str(port), "--data-dir", str(tmp_path / "farm"),
         "--node", fuzz_node.url], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def fuzz(base_url: str, *, farm: bool) -> list[str]:
    """Run every applicable operation; returns the labels exercised."""
    schema = schemathesis.openapi.from_path(SPEC)
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tags = operation.definition.raw.get("tags", [])
        if "farm" in tags and not farm:
            continue
        if farm and operation.path.endswith("/log"):
            continue  # a farm job has no single Blender log

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy())
        def check_operation(case: Any) -> None:
            response = case.call(base_url=base_url, timeout=30)
            case.validate_response(response, checks=CHECKS)

        check_operation()
        exercised.append(operation.label)
    return exercised


def test_the_node_answers_generated_requests_as_documented(fuzz_node: NodeProcess) -> None:
    exercised = fuzz(fuzz_node.url, farm=False)
    assert "POST /job" in exercised and "GET /job/{job_id}" in exercised and "POST /scenes" in exercised
    assert requests.get(fuzz_node.url + "/health", timeout=5).status_code == 200
    assert fuzz_node.proc.poll() is None


def test_the_farm_answers_generated_requests_as_documented(fuzz_farm: str, fuzz_node: NodeProcess) -> None:
    exercised = fuzz(fuzz_farm, farm=True)
    assert "POST /render" in exercised and "POST /nodes" in exercised
    assert requests.get(fuzz_farm + "/health", timeout=5).status_code == 200


JUNK = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n",  # truncated: no blank line, then the socket closes
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello on a plain port
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /job HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nContent-Type: application/json\r\n\r\n{",
    b"POST /job HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\xff" * 5000,
]


def send_raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(4096)
        except OSError:
            return b""  # the server hung up on the junk: fine


def websocket_with_garbage(port: int) -> bytes:
    """Complete a real handshake, then send frames that are not valid WebSocket frames."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = sock.recv(4096)
        try:
            sock.sendall(b"\x8f\xff" + b"\xde\xad\xbe\xef" * 1000)  # reserved opcode, absurd length
            sock.sendall(b"\x81\x85\x00\x00\x00\x00\xff\xfe\xfd\xfc\xfb")  # masked text frame of invalid UTF-8
        except OSError:
            pass
        return answer


def test_raw_socket_junk_does_not_take_the_node_down(fuzz_node: NodeProcess) -> None:
    for payload in JUNK:
        answer = send_raw(fuzz_node.port, payload)
        assert not answer.startswith(b"HTTP/1.1 5"), (payload[:40], answer[:200])
    handshake = websocket_with_garbage(fuzz_node.port)
    assert handshake.startswith(b"HTTP/1.1 101")
    health = requests.get(fuzz_node.url + "/health", timeout=5)
    assert health.status_code == 200
    job = requests.post(fuzz_node.url + "/job", json={"from": 1, "to": 2}, timeout=5)
    assert job.status_code == 202
    assert fuzz_node.proc.poll() is None
