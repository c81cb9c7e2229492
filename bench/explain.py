"""``python -m bench.explain``: how long an explanation takes, against ``/infer`` on the same image.

Starts the real service (``python -m src.serve``, the backend ``DFD_BACKEND`` picks, as ``make
run`` serves it; the result cache off so that every ``/infer`` runs the model), or talks to one
already running (``--url``, e.g. a container image), then, one request at a time over loopback:

* ``GET /explain/methods`` first: only the methods the service offers are measured; the others
  are listed as skipped with the service's reason (a torch-free install offers LIME and SHAP, not
  Grad-CAM and integrated gradients, which need torch and Captum);
* the first ``/explain`` of a gradient method (it loads the torch network then) and of a
  perturbation method, reported apart;
* ``--rounds`` rounds of ``/infer`` then ``/explain?method=gradcam`` on one image, taking turns so
  that outside load falls on both alike; the medians and their ratio (target: at most 3x). Without
  Grad-CAM the rounds time ``/infer`` alone and the ratio is skipped;
* ``--slow-runs`` runs each of ``ig``, ``lime`` and ``shap`` (those offered) at the service's
  default settings (target for LIME and SHAP: at most 5 s each).

Wall time from the client, upload to answer. Exit status 1 when a measured method misses its
target (a skipped one is not counted). Not part of CI (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.procs import API_KEY, ServerProcess, free_port, running, service_command
from src.core.settings import DEFAULT_CHECKPOINT

GRADCAM_TARGET_RATIO = 3.0
PERTURBATION_TARGET_S = 5.0
METHODS = ("gradcam", "ig", "lime", "shap")
GRADIENT = ("gradcam", "ig")
"""The first use of one of these loads the torch network (on a backend other than torch)."""
PERTURBATION = ("lime", "shap")
SLOW = ("ig", "lime", "shap")
"""Timed with ``--slow-runs`` runs each; gradcam is timed in the rounds against /infer."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--image", type=Path, default=Path("examples/fake_0.jpg"))
    parser.add_argument("--rounds", type=int, default=20, help="/infer vs gradcam rounds")
    parser.add_argument("--slow-runs", type=int, default=3, help="runs of ig, lime and shap")
    parser.add_argument("--backend", default="auto", help="DFD_BACKEND (default auto)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: the service default")
    parser.add_argument(
        "--url",
        default=None,
        help="measure this running service instead of starting one (e.g. http://127.0.0.1:8000; "
        "--checkpoint, --backend and --torch-threads are then the service's business)",
    )
    parser.add_argument(
        "--api-key", default=None, help="X-API-Key for --url (default: the bench's)"
    )
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


def offered_methods(client: httpx.Client) -> tuple[str, list[str], dict[str, str]]:
    """``GET /explain/methods``: the backend, the methods the service runs, and the reason for
    each one it does not (in :data:`METHODS` order; methods this bench does not know are left
    out)."""
    response = client.get("/explain/methods")
    if response.status_code != 200:
        raise SystemExit(
            f"GET /explain/methods answered {response.status_code}: {response.text} (a service "
            "from before that route offers no list to measure against)"
        )
    body = response.json()
    views = {view["name"]: view for view in body["methods"]}
    available = [m for m in METHODS if m in views and views[m]["available"]]
    skipped = {
        m: views[m].get("reason") or "not available"
        for m in METHODS
        if m in views and m not in available
    }
    for method in METHODS:
        if method not in views:
            skipped[method] = "not listed by GET /explain/methods"
    return str(body.get("backend", "?")), available, skipped


def measure(client: httpx.Client, data: bytes, rounds: int, slow_runs: int) -> dict[str, Any]:
    """Time what the service offers (see the module's docstring); ``client`` has the base URL
    and the API key."""
    backend, available, skipped = offered_methods(client)
    results: dict[str, Any] = {"backend": backend, "methods": available, "skipped": skipped}
    # the first use of each kind, apart: a gradient method loads the torch network, the first
    # explanation starts the runner's thread
    for kind in (GRADIENT, PERTURBATION):
        first = next((m for m in kind if m in available), None)
        if first is not None:
            results[f"first_{first}_s"], _ = timed_post(client, f"/explain?method={first}", data)
    paired = "gradcam" in available
    infer: list[float] = []
    gradcam: list[float] = []
    body: dict[str, Any] = {}
    for _ in range(rounds):
        infer.append(timed_post(client, "/infer", data)[0])
        if paired:
            seconds, body = timed_post(client, "/explain?method=gradcam", data)
            gradcam.append(seconds)
    results["infer_s"] = statistics.median(infer) if infer else None
    if paired and gradcam:
        results["gradcam_s"] = statistics.median(gradcam)
        results["gradcam_explain_ms"] = body["explanation"]["timings"]["explain_ms"]
        results["ratio"] = results["gradcam_s"] / results["infer_s"]
    for method in SLOW:
        if method not in available or slow_runs < 1:
            continue
        runs = [timed_post(client, f"/explain?method={method}", data) for _ in range(slow_runs)]
        results[f"{method}_s"] = statistics.median(seconds for seconds, _ in runs)
        results[f"{method}_explain_ms"] = statistics.median(
            b["explanation"]["timings"]["explain_ms"] for _, b in runs
        )
    return results


def targets(results: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: True met, False missed, None not measured (its method skipped)."""
    ratio = results.get("ratio")
    verdicts: dict[str, bool | None] = {
        "gradcam": None if ratio is None else ratio <= GRADCAM_TARGET_RATIO
    }
    for method in PERTURBATION:
        seconds = results.get(f"{method}_s")
        verdicts[method] = None if seconds is None else seconds <= PERTURBATION_TARGET_S
    return verdicts


def _seconds(value: float | None) -> str:
    return f"{value:>9.3f}" if value is not None else f"{'-':>9}"


def report(results: dict[str, Any], image: Path) -> str:
    skipped: dict[str, str] = results.get("skipped", {})
    lines = [
        f"explanations of {image} (backend {results['backend']}; wall time, upload to answer)",
        f"{'request':<32} {'median s':>9}",
        f"{'/infer':<32} {_seconds(results.get('infer_s'))}",
    ]
    for method in METHODS:
        if f"{method}_s" in results:
            lines.append(f"{'/explain ' + method:<32} {_seconds(results[f'{method}_s'])}")
        elif method in skipped:
            lines.append(f"{'/explain ' + method:<32} {'skipped':>9}")
    for method in (*GRADIENT, *PERTURBATION):
        if f"first_{method}_s" in results:
            note = "loads torch" if method in GRADIENT else "first explanation"
            label = f"first {method} ({note})"
            lines.append(f"{label:<32} {_seconds(results[f'first_{method}_s'])}")
    lines.append("")
    verdicts = targets(results)
    if verdicts["gradcam"] is None:
        lines.append(f"gradcam / infer: not measured (target <= {GRADCAM_TARGET_RATIO:g}x)")
    else:
        lines.append(
            f"gradcam / infer: {results['ratio']:.2f}x (target <= {GRADCAM_TARGET_RATIO:g}x): "
            f"{'met' if verdicts['gradcam'] else 'NOT met'}"
        )
    for method in PERTURBATION:
        verdict = verdicts[method]
        if verdict is None:
            lines.append(f"{method}: not measured (target <= {PERTURBATION_TARGET_S:g} s)")
        else:
            lines.append(
                f"{method}: {results[f'{method}_s']:.2f} s (target <= "
                f"{PERTURBATION_TARGET_S:g} s): {'met' if verdict else 'NOT met'}"
            )
    for method, reason in skipped.items():
        lines.append(f"skipped {method}: {reason}")
    return "\n".join(lines)


@contextlib.contextmanager
def service(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """``(base URL, API key)`` of the service to measure: ``--url``, or one started here."""
    if args.url:
        yield args.url.rstrip("/"), args.api_key or API_KEY
        return
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
            yield server.base_url, API_KEY


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.image.read_bytes()
    with service(args) as (base_url, api_key):
        headers = {"X-API-Key": api_key}
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
            results = measure(client, data, args.rounds, args.slow_runs)
    print(report(results, args.image))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(v is not False for v in targets(results).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
