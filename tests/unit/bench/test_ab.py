"""``python -m bench.ab``: medians over interleaved rounds and the ratio the report shows."""

from __future__ import annotations

from bench.ab import METRICS, summarise, table


def level(rps: float, p50: float) -> dict[str, float]:
    return {metric: 0.0 for metric in METRICS} | {"throughput_rps": rps, "p50_ms": p50}


def test_medians_and_ratios_over_rounds() -> None:
    rounds = [
        {"baseline": {32: level(50, 600)}, "current": {32: level(55, 580)}},
        {"baseline": {32: level(60, 500)}, "current": {32: level(30, 900)}},
        {"baseline": {32: level(40, 700)}, "current": {32: level(45, 650)}},
    ]
    [row] = summarise(rounds, [32])
    assert (row["baseline_throughput_rps"], row["current_throughput_rps"]) == (50, 45)
    assert row["ratio_throughput_rps"] == 0.9
    assert row["current_p50_ms"] == 650
    assert "| 32 | 50 | 45 | 0.9 |" in table([row])
