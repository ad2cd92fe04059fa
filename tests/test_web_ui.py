"""The dev server's Web UI, in headless Chromium, shows order data through the codec server.

Chromium is Debian's `chromium` package (`.ci/run` installs it); Playwright only drives it, so
no browser is ever downloaded.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio
from aiohttp import web
from playwright.async_api import Page, async_playwright
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from converter import make_data_converter
from extras.codec_server import build_app, serve
from models import OrderBatchRequest, workflow_id_for
from sample_data import generate_orders
from tests.support import free_port, require, temporal_cli_path
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml


CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network: without these, Chromium's background connections are refused.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 30_000


@pytest.fixture
def chromium() -> Path:
    require(str(CHROMIUM), "apt-get install -y chromium")
    return CHROMIUM


@dataclass
class CodecRequests:
    """What the browser sent the codec server, and what it answered."""

    codec_url: str = ""
    seen: list[tuple[str, str, dict[str, str], int]] = field(default_factory=list)

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        self.seen.append((request.method, request.path_qs, dict(request.headers), response.status))


@pytest.fixture
def codec_requests() -> CodecRequests:
    return CodecRequests()


@pytest.fixture
async def ui_client(
    redis_client: redis.asyncio.Redis, codec_requests: CodecRequests, task_queue: str
) -> AsyncIterator[tuple[Client, str]]:
    """A dev server whose Web UI decodes through a running codec server; yields (client, UI)."""
    converter = make_data_converter(redis_client)
    ui_port = free_port()
    ui_url = f"http://localhost:{ui_port}"
    app = build_app(converter, ui_origins=[ui_url])
    app.on_response_prepare.append(codec_requests.record)
    async with serve(app, "127.0.0.1", 0) as codec_url:
        codec_requests.codec_url = codec_url
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli_path(),
            dev_server_log_level="error",
            ui=True,
            ui_port=ui_port,
            dev_server_extra_args=["--ui-codec-endpoint", codec_url],
        )
        try:
            config = env.client.config()
            config["data_converter"] = converter
            client = Client(**config)
            async with build_worker(client, task_queue=task_queue):
                yield client, ui_url
        finally:
            await env.shutdown()


async def run_batch(client: Client, order_count: int, task_queue: str) -> str:
    """Run a batch to completion and return its batch id."""
    batch_id = f"ui-{uuid.uuid4().hex[:8]}"
    await client.execute_workflow(
        ProcessOrderBatchWorkflow.run,
        OrderBatchRequest(batch_id, order_count),
        id=workflow_id_for(batch_id),
        task_queue=task_queue,
    )
    return batch_id


async def open_fetch_orders_result(page: Page, client: Client, ui_url: str, batch_id: str) -> None:
    """Open the page run's event history and expand the event carrying fetch_orders' result.

    (A one-page batch: its page workflow's history holds the order list.)"""
    workflow_id = workflow_id_for(batch_id) + "-page-1"
    run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    await page.goto(f"{ui_url}/namespaces/default/workflows/{workflow_id}/{run_id}/history")
    # Newest first: the last "Activity Task Completed" row is fetch_orders'.
    await page.get_by_text("Activity Task Completed").last.click()


async def test_web_ui_shows_orders_decoded_by_the_codec_server(
    ui_client: tuple[Client, str],
    chromium: Path,
    tmp_path: Path,
    codec_requests: CodecRequests,
    task_queue: str,
) -> None:
    client, ui_url = ui_client
    # 20 orders compress to a few KiB and stay inline; 5,000 go to Redis as a reference.
    inline_batch, stored_batch = (
        await run_batch(client, 20, task_queue),
        await run_batch(client, 5000, task_queue),
    )

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(
                viewport={"width": 1600, "height": 1000}, accept_downloads=True
            )
            page.set_default_timeout(TIMEOUT_MS)

            # Inline and compressed: the page itself shows the decoded order list.
            first = generate_orders(inline_batch, 0, 1)[0]
            await open_fetch_orders_result(page, client, ui_url, inline_batch)
            await page.get_by_text(f'"email": "{first.customer.email}"').first.wait_for()
            await page.get_by_text(f'"customer_id": "{first.customer.customer_id}"').wait_for()
            await page.get_by_text(f'"batch_id": "{inline_batch}"').first.wait_for()

            # In Redis: the page shows the reference, and its download button fetches the
            # orders through the codec server's /download.
            first = generate_orders(stored_batch, 0, 1)[0]
            await open_fetch_orders_result(page, client, ui_url, stored_batch)
            await page.get_by_text("payload stored externally").first.wait_for()
            await page.get_by_text(f"wi:{workflow_id_for(stored_batch)}-page-1:").first.wait_for()
            async with page.expect_download() as download_info:
                await page.get_by_role("button", name="KB").first.click()
            download = await download_info.value
            saved = tmp_path / download.suggested_filename
            await download.save_as(saved)
        finally:
            await browser.close()

    orders = saved.read_text()
    assert f'"order_id": "{first.order_id}"' in orders
    assert f'"email": "{first.customer.email}"' in orders
    assert orders.count('"order_id"') == 5000

    # What the browser really sent: the codec server restricts Origin, Host and Content-Type.
    sent = {(method, path.split("?")[0]) for method, path, _, _ in codec_requests.seen}
    assert {("POST", "/decode"), ("POST", "/download")} <= sent
    for method, path, headers, status in codec_requests.seen:
        assert status in (200, 204), (method, path, status)
        assert headers["Origin"] == ui_url
        assert headers["Host"] == codec_requests.codec_url.removeprefix("http://")
        if method == "POST":
            assert headers["Content-Type"] == "application/json"
            assert headers["X-Namespace"] == "default"
            assert path.endswith("?preserveStorageRefs=true")
