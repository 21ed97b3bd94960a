"""The shipped OpenAPI document is valid, covers every route, and real responses match it."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from conftest import BLEND_HEADER, REPO, NodeProcess, stub_scene, wait_terminal
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from rendernode.farm.app import FarmSettings, create_farm_app

SPEC: dict[str, Any] = yaml.safe_load((REPO / "static" / "openapi.yaml").read_text())
UNDOCUMENTED = {"/", "/openapi.yaml", "/static"}


def test_document_is_valid_openapi() -> None:
    validate(SPEC)


def template_of(path: str) -> str:
    for template in SPEC["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not in the OpenAPI document")


async def check(response: Any, method: str) -> None:
    """Assert a real response is one the document allows, with the headers and body it describes."""
    template = template_of(response.url.path)
    operation = SPEC["paths"][template][method.lower()]
    documented = operation["responses"].get(str(response.status))
    assert documented is not None, f"{method} {template} answered undocumented {response.status}"
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    for header in documented.get("headers", {}):
        assert header in response.headers, f"{method} {template} {response.status} lacks {header}"
    content = documented.get("content", {})
    if "application/json" in content:
        assert response.content_type == "application/json"
        schema = {**content["application/json"]["schema"], "components": SPEC["components"]}
        OAS30Validator(schema).validate(await response.json())
    elif content:
        assert response.content_type in content, (response.content_type, list(content))


def test_every_route_is_documented(node: TestClient) -> None:
    app = node.server.app
    assert app is not None
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if path in UNDOCUMENTED or path.startswith("/static"):
            continue
        assert path in SPEC["paths"], f"route {path} is missing from static/openapi.yaml"


async def test_real_responses_match_the_document(node: TestClient) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/job", {"json": {"from": 1, "to": 2}}),
        ("POST", "/job", {"json": {"from": "x", "to": 2}}),
        ("POST", "/job", {"data": "from=1", "headers": {"Content-Type": "text/plain"}}),
        ("GET", "/job/missing", {}),
        ("DELETE", "/job/missing", {}),
        ("GET", "/jobs", {}),
        ("GET", "/jobs?limit=-1", {}),
        ("GET", "/health", {}),
        ("GET", "/scenes", {}),
        (
            "POST",
            "/scenes",
            {"data": io.BytesIO(BLEND_HEADER + b"openapi"), "headers": {"Content-Type": "application/octet-stream"}},
        ),
        ("POST", "/scenes", {"data": b"nope", "headers": {"Content-Type": "application/octet-stream"}}),
        ("GET", "/job/missing/log", {}),
    ]
    for method, path, kwargs in calls:
        response = await node.request(method, path, **kwargs)
        await check(response, method)

    first = await node.post("/job", json={"from": 1, "to": 2})
    job = await first.json()
    polled = await node.get(f"/job/{job['id']}")
    await check(polled, "GET")
    await wait_terminal(node, job["id"])
    for method, path in [
        ("GET", f"/job/{job['id']}"),
        ("DELETE", f"/job/{job['id']}"),
        ("GET", f"/job/{job['id']}/frames/1"),
        ("GET", f"/job/{job['id']}/frames/9"),
        ("GET", f"/job/{job['id']}/log?tail=3"),
        ("GET", "/jobs?status=completed"),
    ]:
        await check(await node.request(method, path), method)


@pytest.mark.parametrize("path", ["/", "/openapi.yaml"])
async def test_dashboard_and_document_are_served(node: TestClient, path: str) -> None:
    response = await node.get(path)
    assert response.status == 200


async def test_the_farm_routes_are_documented_and_answer_as_documented(
    aiohttp_client: Any, tmp_path: Any, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    data = tmp_path / "node"
    stub_scene(data)
    node = NodeProcess(data, fake_blender, None, "--scene", "stub.blend")
    node_processes.append(node)
    node.wait_ready()
    farm = await aiohttp_client(create_farm_app(FarmSettings(data_dir=tmp_path / "farm", nodes=[node.url])))
    for resource in farm.server.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if path in UNDOCUMENTED or path.startswith("/static"):
            continue
        assert path in SPEC["paths"], f"farm route {path} is missing from static/openapi.yaml"

    job = await (await farm.post("/render", json={"from": 1, "to": 2})).json()
    for method, path, kwargs in [
        ("GET", f"/status/{job['id']}", {}),
        ("POST", "/render", {"json": {"from": 2}}),
        ("GET", "/status/nope", {}),
        ("GET", "/nodes", {}),
        ("POST", "/nodes", {"json": {"url": node.url}}),
        ("POST", "/nodes", {"json": {"url": 5}}),
        ("DELETE", "/nodes/nope", {}),
        ("GET", "/health", {}),
        ("GET", "/jobs", {}),
    ]:
        await check(await farm.request(method, path, **kwargs), method)
    await wait_terminal(farm, job["id"])
    await check(await farm.get(f"/job/{job['id']}"), "GET")
    await check(await farm.get(f"/job/{job['id']}/frames/1"), "GET")
