"""``python -m bench.explain``: how long an explanation takes, against ``/infer`` on the same image.

Starts the real service (``python -m src.serve``, the backend ``DFD_BACKEND`` picks, as ``make
run`` serves it; the result cache off so that every ``/infer`` runs the model), then, one request
at a time over loopback:

* the first ``/explain`` (gradient methods load the torch network then; reported apart);
* ``--rounds`` rounds of ``/infer`` then ``/explain?method=gradcam`` on one image, taking turns so
  that outside load falls on both alike; the medians and their ratio (target: at most 3x);
* ``--slow-runs`` runs each of ``ig``, ``lime`` and ``shap`` at the service's default settings
  (target for LIME and SHAP: at most 5 s each).

Wall time from the client, upload to answer. Not part of CI (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import API_KEY, ServerProcess, free_port, running, service_command
from src.core.settings import DEFAULT_CHECKPOINT

GRADCAM_TARGET_RATIO = 3.0
PERTURBATION_TARGET_S = 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--image", type=Path, default=Path("examples/fake_0.jpg"))
    parser.add_argument("--rounds", type=int, default=20, help="/infer vs gradcam rounds")
    parser.add_argument("--slow-runs", type=int, default=3, help="runs of ig, lime and shap")
    parser.add_argument("--backend", default="auto", help="DFD_BACKEND (default auto)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: the service default")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def timed_post(client: httpx.Client, path: str, data: bytes) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(path, files={"file": ("image.jpg", data, "image/jpeg")})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return elapsed, body


def measure(base_url: str, data: bytes, rounds: int, slow_runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        results["first_gradcam_s"], _ = timed_post(client, "/explain?method=gradcam", data)
        results["first_lime_s"], _ = timed_post(client, "/explain?method=lime", data)
        infer: list[float] = []
        gradcam: list[float] = []
        for _ in range(rounds):
            infer.append(timed_post(client, "/infer", data)[0])
            seconds, body = timed_post(client, "/explain?method=gradcam", data)
            gradcam.append(seconds)
        results["infer_s"] = statistics.median(infer)
        results["gradcam_s"] = statistics.median(gradcam)
        results["gradcam_explain_ms"] = body["explanation"]["timings"]["explain_ms"]
        results["ratio"] = results["gradcam_s"] / results["infer_s"]
        for method in ("ig", "lime", "shap"):
            runs = [timed_post(client, f"/explain?method={method}", data) for _ in range(slow_runs)]
            results[f"{method}_s"] = statistics.median(seconds for seconds, _ in runs)
            results[f"{method}_explain_ms"] = statistics.median(
                b["explanation"]["timings"]["explain_ms"] for _, b in runs
            )
        ready = client.get("/ready").json()
        results["backend"] = ready.get("backend", "?")
    return results


def report(results: dict[str, Any], image: Path) -> str:
    ratio_ok = results["ratio"] <= GRADCAM_TARGET_RATIO
    lines = [
        f"explanations of {image} (backend {results['backend']}; wall time, upload to answer)",
        f"{'request':<28} {'median s':>9}",
        f"{'/infer':<28} {results['infer_s']:>9.3f}",
        f"{'/explain gradcam':<28} {results['gradcam_s']:>9.3f}",
        f"{'/explain ig':<28} {results['ig_s']:>9.3f}",
        f"{'/explain lime':<28} {results['lime_s']:>9.3f}",
        f"{'/explain shap':<28} {results['shap_s']:>9.3f}",
        f"{'first gradcam (loads torch)':<28} {results['first_gradcam_s']:>9.3f}",
        "",
        f"gradcam / infer: {results['ratio']:.2f}x (target <= {GRADCAM_TARGET_RATIO:g}x): "
        f"{'met' if ratio_ok else 'NOT met'}",
    ]
    for method in ("lime", "shap"):
        seconds = results[f"{method}_s"]
        verdict = "met" if seconds <= PERTURBATION_TARGET_S else "NOT met"
        lines.append(
            f"{method}: {seconds:.2f} s (target <= {PERTURBATION_TARGET_S:g} s): {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.image.read_bytes()
    port = free_port()
    env = {
        "DFD_CHECKPOINT_PATH": str(args.checkpoint),
        "DFD_API_KEYS": API_KEY,
        "DFD_HOST": "127.0.0.1",
        "DFD_PORT": str(port),
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_BACKEND": args.backend,
        "DFD_CACHE": "off",
        "DFD_STORE": "off",
    }
    if args.torch_threads:
        env["DFD_TORCH_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory() as logs:
        server = ServerProcess("service", service_command(), env, Path(logs))
        with running(server, ready_timeout_s=180):
            results = measure(server.base_url, data, args.rounds, args.slow_runs)
    print(report(results, args.image))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    targets_met = results["ratio"] <= GRADCAM_TARGET_RATIO and all(
        results[f"{m}_s"] <= PERTURBATION_TARGET_S for m in ("lime", "shap")
    )
    return 0 if targets_met else 1


if __name__ == "__main__":
    sys.exit(main())
