"""``python -m bench.limits`` runs end to end on a few requests (memory and the real Redis), and
its table and exit status follow the targets."""

from __future__ import annotations

import json
from pathlib import Path

from bench.limits import main, summarize, table


def test_a_short_run_measures_every_configuration(tmp_path: Path) -> None:
    assert main(["--requests", "40", "--rounds", "2", "--out", str(tmp_path)]) in (0, 1)
    results = json.loads((tmp_path / "results.json").read_text())
    backends = [row["backend"] for row in results["rows"]]
    assert backends[0] == "none" and {"memory", "redis"} <= set(backends)
    assert all(row["requests"] == 40 for row in results["rows"])
    assert all(row["median_ms"] > 0 for row in results["rows"])
    assert (tmp_path / "results.md").read_text().startswith("| configuration |")


def test_the_added_time_is_judged_against_each_backends_target() -> None:
    from bench.limits import Config

    chosen = [Config("base", "none", {}), Config("m", "memory", {}), Config("r", "redis", {})]
    seconds = {"base": [0.0001] * 3, "m": [0.0007] * 3, "r": [0.0011] * 3}
    rows = summarize(chosen, seconds)["rows"]
    assert [row["added_ms"] for row in rows] == [0.0, 0.6, 1.0]
    assert [row["met"] for row in rows] == [None, False, True]
    assert "NOT met" in table({"rows": rows})
