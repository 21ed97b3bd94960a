"""The dashboard in a real headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import NodeFactory, NodeProcess, start_nodes
from playwright.async_api import Browser, Page, async_playwright, expect

from rendernode.farm.app import FarmSettings, create_farm_app

# The flags keep Chromium from reaching for Google's services on a closed network.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the dashboard tests need Chromium: apt-get install chromium, or set CHROMIUM_PATH")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield instance
        await instance.close()


async def open_dashboard(browser: Browser, client: TestClient) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(str(client.make_url("/")))
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def submit_from_page(page: Page, frame_from: int, frame_to: int, engine: str = "CYCLES") -> str:
    await page.fill("input[name=from]", str(frame_from))
    await page.fill("input[name=to]", str(frame_to))
    await page.select_option("select[name=engine]", engine)
    await page.click("#submit-form button[type=submit]")
    row = page.locator("tr.job").first
    await expect(row).to_be_visible()
    job_id = await row.get_attribute("data-id")
    assert job_id
    return job_id


async def bar_percent(page: Page, job_id: str) -> float:
    width: Any = await page.locator(f'tr.job[data-id="{job_id}"] .bar > span').evaluate("el => el.style.width")
    return float(width.rstrip("%") or 0)


async def test_submit_watch_progress_and_thumbnails_with_real_blender(
    browser: Browser, make_node: NodeFactory, real_blender: str, demo_scene: Path, tmp_path: Path
) -> None:
    scenes = tmp_path / "data" / "scenes"
    scenes.mkdir(parents=True)
    shutil.copy(demo_scene, scenes / "demo.blend")
    client = await make_node(blender=real_blender, scene="demo.blend")
    page = await open_dashboard(browser, client)
    await expect(page.locator("#scene-select")).to_have_value("demo.blend")
    job_id = await submit_from_page(page, 1, 10)

    # The bar moves: seen part-way, then full.
    seen: list[float] = []
    for _ in range(600):
        seen.append(await bar_percent(page, job_id))
        if 0 < seen[-1] < 100:
            break
        await page.wait_for_timeout(50)
    assert any(0 < p < 100 for p in seen), seen
    await expect(page.locator("#thumbs img").first).to_be_visible(timeout=60_000)
    screenshot = os.environ.get("RENDERNODE_SCREENSHOT")
    if screenshot:
        await page.screenshot(path=screenshot, full_page=True)

    row = page.locator(f'tr.job[data-id="{job_id}"]')
    await expect(row.locator(".status")).to_have_text("completed", timeout=120_000)
    assert await bar_percent(page, job_id) == 100.0
    await expect(row.locator(".frames")).to_contain_text("10 / 10")
    thumbs = page.locator("#thumbs img")
    await expect(thumbs).to_have_count(10)
    # Each thumbnail is a decoded image, and links to the full frame.
    loaded = await thumbs.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert loaded == [320] * 10
    href = await page.locator("#thumbs a").first.get_attribute("href")
    assert href == f"/job/{job_id}/frames/10"
    await expect(page.locator("#log")).to_contain_text("Blender quit")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_cancel_from_the_page(browser: Browser, make_node: NodeFactory, fake_env: Any) -> None:
    fake_env(frame_seconds=2)
    client = await make_node()
    page = await open_dashboard(browser, client)
    job_id = await submit_from_page(page, 1, 50)
    row = page.locator(f'tr.job[data-id="{job_id}"]')
    await expect(row.locator(".status")).to_have_text("running")
    await row.locator("button.cancel").click()
    await expect(row.locator(".status")).to_have_text("cancelled")
    await expect(row.locator("button.cancel")).to_be_disabled()
    body = await (await client.get(f"/job/{job_id}")).json()
    assert body["status"] == "cancelled"


async def test_thousands_of_frames_and_a_bad_range(browser: Browser, make_node: NodeFactory, fake_env: Any) -> None:
    fake_env(frame_seconds=0.01)
    client = await make_node()
    page = await open_dashboard(browser, client)
    await submit_from_page(page, 1, 5000)
    await expect(page.locator("#detail-summary")).to_contain_text("of 5000 frames")
    await expect(page.locator("tr.job .frames").first).to_contain_text("/ 5000")
    # A range the node refuses shows the node's own message and queues nothing.
    await page.fill("input[name=from]", "9")
    await page.fill("input[name=to]", "3")
    await page.click("#submit-form button[type=submit]")
    await expect(page.locator("#submit-error")).to_contain_text("is after 'to'")
    assert await page.locator("tr.job").count() == 1


async def test_connection_state_recovers_after_the_socket_drops(browser: Browser, node: TestClient) -> None:
    page = await open_dashboard(browser, node)
    await page.evaluate("state.socket.close()")
    await expect(page.locator("#conn")).not_to_have_attribute("data-state", "live", timeout=2000)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=10_000)


async def test_farm_dashboard_shows_nodes_and_per_frame_progress(
    browser: Browser, aiohttp_client: Any, tmp_path: Path, fake_blender: str, node_processes: list[NodeProcess]
) -> None:
    nodes = start_nodes(2, tmp_path, fake_blender, node_processes, env={"FAKE_BLENDER_FRAME_SECONDS": "0.1"})
    farm = await aiohttp_client(
        create_farm_app(FarmSettings(data_dir=tmp_path / "farm", nodes=[n.url for n in nodes], chunk_size=3,
                                     health_interval=0.3))
    )
    page = await open_dashboard(browser, farm)
    rows = page.locator("#nodes tr.node")
    await expect(rows).to_have_count(2)
    await expect(rows.locator("td:nth-child(3)")).to_have_text(["up", "up"])
    job_id = await submit_from_page(page, 1, 30)
    row = page.locator(f'tr.job[data-id="{job_id}"]')
    await expect(row.locator(".status")).to_have_text("completed", timeout=60_000)
    await expect(row.locator(".frames")).to_contain_text("30 / 30")
    await expect(page.locator("#thumbs img")).to_have_count(12)
    # Each thumbnail names the node that rendered it, and the nodes panel counts their frames.
    assert all(" · n-" in text for text in await page.locator("#thumbs a").all_inner_texts())
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#nodes tr.node td:nth-child(6)')]"
        ".reduce((sum, cell) => sum + Number(cell.textContent), 0) === 30",
        timeout=10_000,
    )
    assert page.errors == []  # type: ignore[attr-defined]
