"""Each benchmark runs end to end with tiny sizes and prints valid JSON. No timing is asserted:
speed is what the benchmarks report, not what the tests check."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import PROJECT_DIR


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


def bench_json(*args: str) -> Any:
    finished = run_bench(*args, "--json")
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


def test_pipeline_compares_baseline_ours_and_floor() -> None:
    result = bench_json("bench.pipeline", "--orders", "300", "--rounds", "1")
    [size] = result["sizes"]
    assert size["orders"] == 300 and size["json_bytes"] > 300 * 500
    assert [size[n]["name"] for n in ("baseline", "ours", "floor")] == ["baseline", "ours", "floor"]
    assert size["baseline"]["redis_keys"] == size["ours"]["redis_keys"] == 1
    assert 0 < size["ours"]["redis_bytes"] <= size["baseline"]["redis_bytes"]
    assert size["floor_serializer"] in ("msgspec.json", "msgspec.msgpack")
    assert result["machine"]["cpus"] >= 1


def test_scale_stores_each_large_order_list_once() -> None:
    result = bench_json("bench.scale", "--orders", "500,8000", "--off-max", "1000")
    small, large, inline = result["runs"]
    assert [run["completed"] for run in result["runs"]] == [True, True, True]
    assert (small["redis_keys"], large["redis_keys"]) == (0, 1)
    # fetch_orders' output and process_orders' input are the same bytes: one key holds them.
    assert large["redis_bytes"] == large["compressed_bytes"]
    assert large["worker_peak_rss_bytes"] > large["compressed_bytes"]
    assert inline == {**inline, "orders": 1000, "external_storage": False, "redis_keys": 0}
    assert result["largest_inline_orders"] == 1000
    assert result["first_failing_inline_orders"] is None


def test_concurrency_completes_every_batch() -> None:
    result = bench_json("bench.concurrency", "--batches", "3", "--orders", "4000")
    assert result["completed"] == result["batches"] == 3
    assert result["redis_keys"] == 3
    assert result["orders_per_second"] > 0


def test_bad_flag_gets_one_clear_line() -> None:
    finished = run_bench("bench.pipeline", "--orders", "ten")
    assert finished.returncode == 2
    assert "'ten' is not a comma-separated list of numbers >= 1" in finished.stderr
    assert "Traceback" not in finished.stderr
