"""The per-backend and face-crop parts of ``python -m bench``: targets, tables, flags, timing."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import pytest

from bench.__main__ import _backend_list, parse_args
from bench.raw_model import int8_path, time_calls
from bench.report import backend_targets, evaluate_targets, raw_backends_table, results_table


def _row(concurrency: int, rps: float, p50: float, client_cpu: float = 7.0) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p50_ms": p50,
        "p95_ms": p50 * 2,
        "p99_ms": p50 * 3,
        "statuses": {"200": 60},
        "server_cpu_pct": 190.0,
        "server_cpu_ms_per_ok": 2000 / rps,
        "client_cpu_pct": client_cpu,
        "other_cpu_pct": 1.0,
    }


def _results(ort_c32: float = 160.0, ort_p50: float = 9.0) -> dict[str, Any]:
    torch_levels = [_row(1, 50.0, 20.0), _row(32, 90.0, 350.0)]
    return {
        "meta": {"nproc": 2},
        "raw": {
            "batches": [{"batch": 1, "median_ms": 15.0, "min_ms": 14.0, "throughput_ips": 66.0}],
            "best": {"batch": 1, "median_ms": 15.0, "throughput_ips": 66.0},
            "batch1": {"batch": 1, "median_ms": 15.0, "throughput_ips": 66.0},
            "device": "cpu",
            "torch_threads": 2,
        },
        "settings": {"max_batch_size": 4, "batch_timeout_ms": 5.0, "face_reference_rps": None},
        "services": {
            "torch": {"backend": "torch", "levels": torch_levels},
            "onnxruntime": {
                "backend": "onnxruntime",
                "levels": [_row(1, 90.0, ort_p50), _row(32, ort_c32, 190.0, client_cpu=12.0)],
            },
        },
        "service": {"backend": "torch", "levels": torch_levels},
        "naive": {"levels": [_row(1, 40.0, 24.0), _row(32, 42.0, 760.0)]},
        "faces": {
            "runs": {
                "torch": {"levels": [_row(1, 20.0, 50.0), _row(32, 25.0, 1200.0)]},
                "onnxruntime": {"levels": [_row(1, 40.0, 25.0), _row(32, 55.0, 580.0)]},
            }
        },
    }


def _verdicts(results: dict[str, Any]) -> dict[str, str]:
    return {t["target"]: t["result"] for t in backend_targets(results)}


def test_backend_targets_pass_on_good_ratios() -> None:
    targets = backend_targets(_results())
    assert [t["result"] for t in targets] == ["PASS"] * 4
    by_name = {t["target"]: t for t in targets}
    assert by_name["service onnxruntime vs torch, req/s at c=32"]["measured"].startswith("1.78x")
    assert by_name["service onnxruntime vs naive, req/s at c=32"]["measured"].startswith("3.81x")
    assert by_name["service onnxruntime vs torch, p50 at c=1"]["measured"].startswith("0.45x")
    face = next(t for t in targets if t["target"].startswith("face crop on"))
    assert face["measured"].startswith("2.20x") and "torch this run" in face["measured"]


def test_backend_targets_fail_and_skip() -> None:
    bad = _verdicts(_results(ort_c32=120.0, ort_p50=14.0))
    assert bad["service onnxruntime vs torch, req/s at c=32"] == "FAIL"  # 1.33x
    assert bad["service onnxruntime vs naive, req/s at c=32"] == "FAIL"  # 2.86x
    assert bad["service onnxruntime vs torch, p50 at c=1"] == "FAIL"  # 70%
    only_torch = _results()
    del only_torch["services"]["onnxruntime"]
    del only_torch["faces"]["runs"]["onnxruntime"]
    skipped = backend_targets(only_torch)
    assert [t["result"] for t in skipped[:3]] == ["SKIP"] * 3
    assert "not run (onnxruntime)" in skipped[0]["measured"]
    # Without per-backend services (an old results dict) there are no backend targets.
    assert backend_targets({"service": {"levels": []}}) == []


def test_face_target_uses_the_reference_rps_when_given() -> None:
    results = _results()
    results["settings"]["face_reference_rps"] = 30.0
    face = next(t for t in backend_targets(results) if t["target"].startswith("face crop on"))
    assert face["result"] == "FAIL"  # 55 / 30 = 1.83x
    assert "--face-reference-rps" in face["measured"]


def test_evaluate_targets_keeps_the_old_ones_and_adds_the_backend_ones() -> None:
    names = [t["target"] for t in evaluate_targets(_results())]
    assert names[0] == "throughput at c=32 vs raw model"
    assert "throughput at c=32 vs naive baseline" in names
    assert names[-1].startswith("face crop on")
    # raw, c=1, naive (no p99: the raw run has no batch-4 row); three backend ratios; faces
    assert len(names) == 3 + 3 + 1


def test_results_table_has_a_row_per_backend_and_the_client_cpu() -> None:
    results = _results()
    results["soak"] = {"backend": "torch", "summary": _row(8, 80.0, 90.0)}
    table = results_table(results)
    assert "| service torch | 32 | 90.0 |" in table
    assert "| service onnxruntime | 32 | 160.0 |" in table
    assert "| naive | 32 | 42.0 |" in table
    assert "| faces onnxruntime | 1 | 40.0 |" in table
    assert "| service torch soak | 8 |" in table
    header = table.splitlines()[0]
    assert "client CPU %" in header
    row = next(line for line in table.splitlines() if "| service onnxruntime | 32 |" in line)
    assert row.split("|")[header.split("|").index(" client CPU % ")].strip() == "12"
    assert "one core of the 2" in table
    # An old results dict (no "services") still gives the plain "service" rows.
    old = copy.deepcopy(results)
    del old["services"], old["faces"], old["soak"]
    assert "| service | 32 | 90.0 |" in results_table(old)


def test_raw_backends_table_shows_skips() -> None:
    row = {"batch": 4, "median_ms": 40.0, "min_ms": 38.0, "throughput_ips": 100.0}
    table = raw_backends_table(
        {
            "torch": {"batches": [row]},
            "onnxruntime": {"batches": [{**row, "median_ms": 20.0, "throughput_ips": 200.0}]},
            "onnxruntime-int8": {"skipped": "no model.int8.onnx beside the checkpoint"},
        }
    )
    assert "| torch | 4 | 40.0 | 38.0 | 100.0 |" in table
    assert "| onnxruntime | 4 | 20.0 |" in table
    assert "skipped: no model.int8.onnx" in table
    assert "not run" in raw_backends_table({})


def test_backend_flags() -> None:
    assert _backend_list("onnxruntime, torch,onnxruntime") == ["onnxruntime", "torch"]
    with pytest.raises(argparse.ArgumentTypeError):
        _backend_list("tensorrt")
    args = parse_args(["--checkpoint", "x.pt"])
    assert args.backends == ["torch", "onnxruntime"]
    assert args.face_crop_run and args.raw_backends and args.face_concurrency == [1, 32]
    quick = parse_args(["--checkpoint", "x.pt", "--backends", "onnxruntime", "--no-face-crop-run"])
    assert quick.backends == ["onnxruntime"] and not quick.face_crop_run
    assert int8_path("checkpoints/deepfake-detector/0.1.0-demo/model.pt").name == "model.int8.onnx"


def test_time_calls_round_robin() -> None:
    order: list[int] = []
    calls = {batch: (lambda batch=batch: order.append(batch)) for batch in (1, 4)}
    rows = time_calls(calls, warmup=1, min_rounds=3, budget_s=0.0)
    assert [row["batch"] for row in rows] == [1, 4]
    assert all(row["iterations"] == 3 for row in rows)
    assert order[4:] == [1, 4, 1, 4, 1, 4]  # after 2 warm-up + 2 estimate calls: interleaved
