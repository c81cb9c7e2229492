"""The results table, the PASS/FAIL targets, the JSON file and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
THROUGHPUT_SHARE_OF_RAW = 0.90
LATENCY_OVERHEAD_MS = 15.0
SPEEDUP_OVER_NAIVE = 1.3
SMALL_QUEUE_RSS_MB = 100.0
SOAK_RSS_MB = 50.0
KEY_CONCURRENCY = 32
# The backend issue's targets (ratios within one run).
ORT_OVER_TORCH = 1.5  # service on onnxruntime vs the service on torch, req/s at c=32
ORT_OVER_NAIVE = 3.0  # service on onnxruntime vs the naive baseline, req/s at c=32
FACE_SPEEDUP = 2.0  # the demo model's default path (face crop on) vs today's, req/s at c=32
ORT_P50_SHARE = 0.60  # service on onnxruntime vs torch, p50 at c=1


def level(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((row for row in levels if row["concurrency"] == concurrency), None)


def raw_row(raw: dict[str, Any], batch: int) -> dict[str, Any] | None:
    return next((row for row in raw["batches"] if row["batch"] == batch), None)


def throughput_goal(raw: dict[str, Any]) -> float:
    """req/s the service must reach at c=32: a share of the raw model's best batch."""
    return THROUGHPUT_SHARE_OF_RAW * raw["best"]["throughput_ips"]


def p99_goal(raw: dict[str, Any], settings: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
    """The c=32 p99 bound in ms (batch wait + two passes of the largest batch) and that batch's
    raw row; None when the raw run did not time the service's maximum batch."""
    largest = raw_row(raw, settings["max_batch_size"])
    if largest is None:
        return None
    return settings["batch_timeout_ms"] + 2 * largest["median_ms"], largest


def _target(name: str, goal: str, measured: str, passed: bool | None) -> dict[str, Any]:
    verdict = SKIP if passed is None else (PASS if passed else FAIL)
    return {"target": name, "goal": goal, "measured": measured, "result": verdict}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each PASS, FAIL, or SKIP when the run did not measure it."""
    raw = results["raw"]
    settings = results["settings"]
    service = results["service"]["levels"]
    naive = results.get("naive", {}).get("levels", [])
    targets = []

    best = raw["best"]
    at_key = level(service, KEY_CONCURRENCY)
    goal = throughput_goal(raw)
    targets.append(
        _target(
            f"throughput at c={KEY_CONCURRENCY} vs raw model",
            f">= {goal:.1f} req/s ({THROUGHPUT_SHARE_OF_RAW:.0%} of raw best "
            f"{best['throughput_ips']:.1f} img/s at batch {best['batch']})",
            f"{at_key['throughput_rps']:.1f} req/s" if at_key else "not run",
            at_key["throughput_rps"] >= goal if at_key else None,
        )
    )

    at_one = level(service, 1)
    batch1 = raw["batch1"]
    if batch1 is not None:
        goal = batch1["median_ms"] + LATENCY_OVERHEAD_MS
        measured_one = at_one and at_one["p50_ms"]
        targets.append(
            _target(
                "median latency at c=1 vs raw batch-1 forward",
                f"<= {goal:.1f} ms (forward {batch1['median_ms']:.1f} ms "
                f"+ {LATENCY_OVERHEAD_MS:g})",
                f"{measured_one:.1f} ms" if measured_one else "not run",
                measured_one <= goal if measured_one else None,
            )
        )

    naive_key = level(naive, KEY_CONCURRENCY)
    both = at_key is not None and naive_key is not None and naive_key["throughput_rps"] > 0
    ratio = at_key["throughput_rps"] / naive_key["throughput_rps"] if both else None  # type: ignore[index]
    targets.append(
        _target(
            f"throughput at c={KEY_CONCURRENCY} vs naive baseline",
            f">= {SPEEDUP_OVER_NAIVE}x naive"
            + (f" ({SPEEDUP_OVER_NAIVE * naive_key['throughput_rps']:.1f} req/s)" if both else ""),  # type: ignore[index]
            f"{ratio:.2f}x" if ratio is not None else "not run",
            ratio >= SPEEDUP_OVER_NAIVE if ratio is not None else None,
        )
    )

    bound = p99_goal(raw, settings)
    if bound is not None:
        goal, largest = bound
        p99 = at_key and at_key["p99_ms"]
        targets.append(
            _target(
                f"p99 at c={KEY_CONCURRENCY}",
                f"< {goal:.1f} ms (timeout {settings['batch_timeout_ms']:g} + 2 x "
                f"{largest['median_ms']:.1f} ms forward at batch {largest['batch']})",
                f"{p99:.1f} ms" if p99 else "not run",
                p99 < goal if p99 else None,
            )
        )

    small = results.get("small_queue")
    if small:
        statuses = small["summary"]["statuses"]
        unexpected = {k: v for k, v in statuses.items() if k not in ("200", "503")}
        targets.append(
            _target(
                f"c={small['concurrency']} with queue {small['max_queue_size']}: answers",
                "only 200/503; no 500, no timeout, no socket error",
                ", ".join(f"{k}: {v}" for k, v in statuses.items()),
                not unexpected and statuses.get("200", 0) > 0,
            )
        )
        growth = small["rss_after_mb"] - small["rss_before_mb"]
        targets.append(
            _target(
                f"c={small['concurrency']} with queue {small['max_queue_size']}: RSS",
                f"within {SMALL_QUEUE_RSS_MB:g} MB of before",
                f"{small['rss_before_mb']:.0f} -> {small['rss_after_mb']:.0f} MB "
                f"({growth:+.1f}; peak {small['rss_peak_mb']:.0f})",
                abs(growth) <= SMALL_QUEUE_RSS_MB,
            )
        )

    targets += backend_targets(results)

    soak = results.get("soak")
    if soak:
        statuses = soak["summary"]["statuses"]
        targets.append(
            _target(
                f"soak {soak['summary']['requests']} requests at c={soak['concurrency']}: RSS",
                f"growth after warm-up <= {SOAK_RSS_MB:g} MB",
                f"{soak['rss_after_warmup_mb']:.0f} -> {soak['rss_end_mb']:.0f} MB "
                f"({soak['growth_mb']:+.1f}); statuses {statuses}",
                soak["growth_mb"] <= SOAK_RSS_MB,
            )
        )
    return targets


def _ratio_target(
    name: str,
    rule: str,
    top: tuple[str, float | None],
    bottom: tuple[str, float | None],
    goal: float,
    *,
    at_most: bool = False,
) -> dict[str, Any]:
    """``top / bottom`` against ``goal`` (at least, or at most); SKIP when either is missing."""
    (top_name, top_value), (bottom_name, bottom_value) = top, bottom
    if not top_value or not bottom_value:
        missing = top_name if not top_value else bottom_name
        return _target(name, rule, f"not run ({missing})", None)
    ratio = top_value / bottom_value
    measured = f"{ratio:.2f}x ({top_name} {top_value:.1f} / {bottom_name} {bottom_value:.1f})"
    return _target(name, rule, measured, ratio <= goal if at_most else ratio >= goal)


def _value(levels: list[dict[str, Any]], concurrency: int, key: str) -> float | None:
    row = level(levels, concurrency)
    return row.get(key) if row else None


def backend_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The backend issue's targets, as ratios between runs of the same benchmark. Only when the
    run served per backend (``results["services"]``)."""
    services = results.get("services")
    if not services:
        return []
    key = KEY_CONCURRENCY
    ort = services.get("onnxruntime", {}).get("levels", [])
    torch = services.get("torch", {}).get("levels", [])
    naive = results.get("naive", {}).get("levels", [])
    targets = [
        _ratio_target(
            f"service onnxruntime vs torch, req/s at c={key}",
            f">= {ORT_OVER_TORCH:g}x",
            ("onnxruntime", _value(ort, key, "throughput_rps")),
            ("torch", _value(torch, key, "throughput_rps")),
            ORT_OVER_TORCH,
        ),
        _ratio_target(
            f"service onnxruntime vs naive, req/s at c={key}",
            f">= {ORT_OVER_NAIVE:g}x",
            ("onnxruntime", _value(ort, key, "throughput_rps")),
            ("naive", _value(naive, key, "throughput_rps")),
            ORT_OVER_NAIVE,
        ),
        _ratio_target(
            "service onnxruntime vs torch, p50 at c=1",
            f"<= {ORT_P50_SHARE:.0%} of torch's",
            ("onnxruntime", _value(ort, 1, "p50_ms")),
            ("torch", _value(torch, 1, "p50_ms")),
            ORT_P50_SHARE,
            at_most=True,
        ),
    ]
    faces = results.get("faces")
    if faces:
        runs = faces.get("runs", {})
        # The default path: DFD_BACKEND=auto picks onnxruntime on the CPU when the export is there.
        default = "onnxruntime" if "onnxruntime" in runs else next(iter(runs), None)
        value = _value(runs[default]["levels"], key, "throughput_rps") if default else None
        reference = results.get("settings", {}).get("face_reference_rps")
        if reference:
            bottom: tuple[str, float | None] = ("today's (--face-reference-rps)", reference)
        else:
            torch_runs = runs.get("torch", {}).get("levels", [])
            bottom = ("torch this run", _value(torch_runs, key, "throughput_rps"))
        targets.append(
            _ratio_target(
                f"face crop on (demo model, examples), default path req/s at c={key}",
                f">= {FACE_SPEEDUP:g}x today's",
                (f"{default} faces", value),
                bottom,
                FACE_SPEEDUP,
            )
        )
    return targets


def feasibility(results: dict[str, Any]) -> list[dict[str, str]]:
    """Whether the throughput and p99 targets can be met on this machine at all, from the
    measured numbers: a CPU budget per request, and Little's law for a closed loop."""
    raw, settings = results["raw"], results["settings"]
    best = raw["best"]
    at_key = level(results["service"]["levels"], KEY_CONCURRENCY)
    rows: list[dict[str, str]] = []
    nproc = results.get("meta", {}).get("nproc")
    if raw.get("device", "cpu") == "cpu" and nproc:
        goal_rps = throughput_goal(raw)
        budget = nproc * 1000 / goal_rps
        model = raw["torch_threads"] * best["median_ms"] / best["batch"]
        measured = at_key.get("server_cpu_ms_per_ok") if at_key else None
        rows.append(
            {
                "check": f"CPU per request for {goal_rps:.1f} req/s on {nproc} cores",
                "value": f"budget {budget:.1f} ms; the model alone takes {model:.1f} ms per image "
                f"({raw['torch_threads']} threads x {best['median_ms']:.1f} ms / batch "
                f"{best['batch']}), leaving {budget - model:.1f} ms for HTTP, decoding, "
                f"resizing and batching",
                "verdict": (
                    f"the service used {measured:.1f} ms per answer at c={KEY_CONCURRENCY}, "
                    f"{measured - model:.1f} ms beyond the model's own; its ceiling here is "
                    f"{nproc * 1000 / measured:.1f} req/s"
                    if measured
                    else "the service's CPU per answer was not measured"
                ),
            }
        )
    bound = p99_goal(raw, settings)
    if bound is not None:
        goal = bound[0]
        floor = KEY_CONCURRENCY / best["throughput_ips"] * 1000
        rows.append(
            {
                "check": f"p99 at c={KEY_CONCURRENCY} (Little's law)",
                "value": f"{KEY_CONCURRENCY} clients in a closed loop wait {KEY_CONCURRENCY} / "
                f"throughput on average: at least {floor:.1f} ms at the raw model's best "
                f"{best['throughput_ips']:.1f} img/s; the goal is {goal:.1f} ms",
                "verdict": (
                    "no batch size or wait can meet the goal on this machine"
                    if floor >= goal
                    else f"reachable if the service keeps {KEY_CONCURRENCY * 1000 / goal:.1f} "
                    "req/s or more"
                ),
            }
        )
    return rows


def feasibility_table(rows: list[dict[str, str]]) -> str:
    lines = ["| check | numbers | so |", "|---|---|---|"]
    lines += [f"| {r['check']} | {r['value']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float | int) else str(value)


def results_table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per server and concurrency."""
    header = (
        "| server | conc | req/s | p50 ms | p95 ms | p99 ms | statuses | mean batch "
        "| queue p95 ms | forward mean ms | preproc mean ms | server CPU % "
        "| server CPU ms/answer | client CPU % | other CPU % |"
    )
    lines = [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    rows: list[tuple[str, dict[str, Any]]] = []
    if results.get("services"):
        for backend, entry in results["services"].items():
            rows += [(f"service {backend}", row) for row in entry["levels"]]
    else:
        rows += [("service", row) for row in results["service"]["levels"]]
    rows += [("naive", row) for row in results.get("naive", {}).get("levels", [])]
    for backend, entry in results.get("faces", {}).get("runs", {}).items():
        rows += [(f"faces {backend}", row) for row in entry["levels"]]
    if results.get("small_queue"):
        small = results["small_queue"]
        backend = f" {small['backend']}" if small.get("backend") else ""
        rows.append((f"service{backend}, queue {small['max_queue_size']}", small["summary"]))
    if results.get("soak"):
        backend = f" {results['soak']['backend']}" if results["soak"].get("backend") else ""
        rows.append((f"service{backend} soak", results["soak"]["summary"]))
    for name, row in rows:
        stages = row.get("stages", {})
        statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    str(row["concurrency"]),
                    _fmt(row["throughput_rps"]),
                    _fmt(row["p50_ms"]),
                    _fmt(row["p95_ms"]),
                    _fmt(row["p99_ms"]),
                    statuses,
                    _fmt(stages.get("batch_size", {}).get("mean"), ".2f"),
                    _fmt(stages.get("queue_wait_ms", {}).get("p95")),
                    _fmt(stages.get("forward_ms", {}).get("mean")),
                    _fmt(stages.get("preprocess_ms", {}).get("mean")),
                    _fmt(row.get("server_cpu_pct"), ".0f"),
                    _fmt(row.get("server_cpu_ms_per_ok")),
                    _fmt(row.get("client_cpu_pct"), ".0f"),
                    _fmt(row.get("other_cpu_pct"), ".0f"),
                ]
            )
            + " |"
        )
    nproc = results.get("meta", {}).get("nproc")
    if nproc:
        lines.append(
            f"\nclient CPU %: the load client's own CPU (the benchmark process), 100 = one "
            f"core of the {nproc}; other CPU %: everything but server and client."
        )
    return "\n".join(lines)


def raw_backends_table(raw_backends: dict[str, Any]) -> str:
    """One row per backend and batch size: ``Backend.score`` on uint8 crops."""
    lines = ["| backend | batch | median ms | min ms | img/s |", "|---|---|---|---|---|"]
    for name, raw in raw_backends.items():
        if "skipped" in raw:
            lines.append(f"| {name} | - | - | - | skipped: {raw['skipped']} |")
            continue
        for row in raw["batches"]:
            lines.append(
                f"| {name} | {row['batch']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} "
                f"| {row['throughput_ips']:.1f} |"
            )
    if not raw_backends:
        lines.append("| not run | - | - | - | - |")
    return "\n".join(lines)


def raw_table(raw: dict[str, Any]) -> str:
    lines = ["| batch | median ms | min ms | img/s |", "|---|---|---|---|"]
    for row in raw["batches"]:
        lines.append(
            f"| {row['batch']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} "
            f"| {row['throughput_ips']:.1f} |"
        )
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | **{t['result']}** |")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def plot(results: dict[str, Any], path: Path) -> Path:
    """Throughput and p99 against concurrency, service vs naive, with the raw model's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = iter(["tab:blue", "tab:purple", "tab:orange", "tab:brown"])
    if results.get("services"):
        series = [
            (f"service {name}", entry["levels"], next(colours, "tab:blue"), "o")
            for name, entry in results["services"].items()
        ]
    else:
        series = [("service", results["service"]["levels"], "tab:blue", "o")]
    if results.get("naive"):
        series.append(("naive baseline", results["naive"]["levels"], "tab:red", "s"))
    for name, levels, colour, marker in series:
        xs = [row["concurrency"] for row in levels]
        left.plot(
            xs, [row["throughput_rps"] for row in levels], marker=marker, color=colour, label=name
        )
        right.plot(
            xs,
            [row["p99_ms"] or float("nan") for row in levels],
            marker=marker,
            color=colour,
            label=f"{name} p99",
        )
    raw = results["raw"]
    best, batch1 = raw["best"], raw["batch1"]
    left.axhline(
        best["throughput_ips"],
        color="tab:green",
        linestyle="--",
        label=f"raw model, batch {best['batch']} ({best['throughput_ips']:.1f} img/s)",
    )
    left.axhline(
        throughput_goal(raw),
        color="tab:green",
        linestyle=":",
        label=f"target at c={KEY_CONCURRENCY}: {THROUGHPUT_SHARE_OF_RAW:.0%} of raw best",
    )
    if batch1:
        left.axhline(
            batch1["throughput_ips"],
            color="tab:gray",
            linestyle=":",
            label=f"raw model, batch 1 ({batch1['throughput_ips']:.1f} img/s)",
        )
    bound = p99_goal(raw, results["settings"])
    if bound is not None:
        goal = bound[0]
        right.axhline(
            goal,
            color="tab:green",
            linestyle="--",
            label=f"p99 target at c={KEY_CONCURRENCY} ({goal:.0f} ms)",
        )
    concurrencies = sorted({row["concurrency"] for _, levels, _, _ in series for row in levels})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.minorticks_off()
        axis.set_xlabel("concurrent clients")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylabel("answers 200 per second")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    meta = results["meta"]
    fig.suptitle(
        f"{raw['architecture']} @ {raw['input_size']} px on {meta['cpu_model']} "
        f"({meta['nproc']} CPUs), torch threads {raw['torch_threads']}, "
        f"max batch {results['settings']['max_batch_size']}, "
        f"timeout {results['settings']['batch_timeout_ms']:g} ms",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
