"""Each benchmark runs end to end with tiny sizes and prints valid JSON. No timing is asserted:
speed is what the benchmarks report, not what the tests check."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import PROJECT_DIR, usage_error

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml


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


def test_pipeline_compares_baseline_ours_and_floor_on_both_data_sets() -> None:
    result = bench_json(
        "bench.pipeline", "--orders", "300", "--filler-orders", "100", "--rounds", "1"
    )
    ours, filler = result["sizes"]
    assert (ours["data_set"], ours["orders"]) == ("orders", 300)
    assert (filler["data_set"], filler["orders"]) == ("filler", 100)
    assert ours["json_bytes"] > 300 * 500 and filler["json_bytes"] > 100 * 2_500
    for size in (ours, filler):
        assert [size[n]["name"] for n in ("baseline", "ours", "floor")] == [
            "baseline",
            "ours",
            "floor",
        ]
        assert size["baseline"]["redis_keys"] == size["ours"]["redis_keys"] == 1
        assert 0 < size["ours"]["redis_bytes"] <= size["baseline"]["redis_bytes"] * 1.02
        assert size["floor_serializer"] in ("msgspec.json", "msgspec.msgpack")
    assert result["machine"]["cpus"] >= 1


def test_scale_runs_paged_batches_as_a_user_does() -> None:
    result = bench_json("bench.scale", "--orders", "300,1200", "--page-size", "500")
    small, large = result["runs"]
    assert (small["orders"], small["pages"]) == (300, 1)
    assert (large["orders"], large["pages"]) == (1200, 3)
    for run in (small, large):
        assert run["worker_peak_rss_bytes"] > 50 * 2**20  # a real Python process was measured
        assert run["starter_peak_rss_bytes"] > 30 * 2**20
        assert 0 < run["slowest_workflow_task_ms"] < run["wall_seconds"] * 1000
        assert run["order_list_json_bytes"] > 5 * run["order_list_stored_bytes"] > 0
    assert result["largest_over_previous_orders"] == 4.0


def test_latency_measures_a_small_batch_idle_and_loaded() -> None:
    result = bench_json("bench.latency", "--small", "20", "--large", "40000", "--samples", "1")
    assert len(result["idle_seconds"]) == len(result["loaded_seconds"]) == 1
    assert result["loaded_over_idle"] > 0


def test_scale_out_runs_one_batch_on_one_and_two_workers() -> None:
    result = bench_json("bench.scale_out", "--orders", "3000", "--rounds", "1")
    assert result["one_worker_seconds"] > 0 and result["two_workers_seconds"] > 0
    assert result["speedup"] == round(
        result["one_worker_seconds"] / result["two_workers_seconds"], 2
    )


def test_concurrency_completes_every_batch() -> None:
    result = bench_json("bench.concurrency", "--batches", "3", "--orders", "4000")
    assert result["completed"] == result["batches"] == 3
    assert result["redis_keys"] == 3
    assert result["orders_per_second"] > 0


def test_bad_flag_gets_one_clear_line() -> None:
    finished = run_bench("bench.pipeline", "--orders", "ten")
    assert finished.returncode == 2
    error = usage_error(finished.stderr, "pipeline.py")
    assert "'ten' is not a whole number from 1 to" in error
