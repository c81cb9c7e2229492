"""``python -m bench.lifecycle``: a version switch under load, and the memory it costs.

One server on a model repository holding the demo model twice (versions ``a`` and ``b``: the
same weights and ONNX export, copied, so the figures are the lifecycle's own). While ``--clients``
threads send ``examples/fake_0.jpg`` to ``/infer`` as fast as they are answered (result cache
off), the admin API loads ``b``, moves the traffic to it in steps (10, 50, 100 %), rolls back
three times, moves it again, and unloads ``a``. Reported: every answer's status (the target:
no answer other than 200), how long the load took, and the server's resident memory with one
version, with two, and after the unload (the target: back to one version's worth).
Not part of CI; see bench/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.procs import (
    API_KEY,
    REPO_ROOT,
    ServerProcess,
    clean_environ,
    free_port,
    load_average,
    rss_mb,
    running,
    service_command,
    stop_on_signals,
)
from bench.report import write_json
from src.core.settings import DEFAULT_CHECKPOINT

ADMIN_KEY = "bench-admin-0123456789"
MODEL = "deepfake-detector"
SETTLE_S = 1.0


def make_repository(checkpoint: Path, root: Path) -> None:
    onnx = checkpoint.with_suffix(".onnx")
    if not onnx.is_file():
        raise SystemExit(f"{onnx} is missing: python -m src.export --checkpoint {checkpoint}")
    for version in ("a", "b"):
        folder = root / MODEL / version
        folder.mkdir(parents=True)
        for source in (checkpoint, onnx):
            shutil.copyfile(source, folder / source.name)


def settled_rss(pid: int) -> float:
    """Resident MB once the server is idle (median of a few readings)."""
    time.sleep(SETTLE_S)
    return statistics.median(rss_mb(pid) for _ in range(5))


class Load:
    """``clients`` threads sending one image each, one request at a time, until stopped."""

    def __init__(self, base: str, image: bytes, clients: int) -> None:
        self.base, self.image, self.clients = base, image, clients
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(
                        f"{self.base}/infer",
                        content=self.image,
                        headers={"X-API-Key": API_KEY, "content-type": "image/jpeg"},
                    )
                    status, version = response.status_code, ""
                    if status == 200:
                        version = response.json()["model_version"]
                except httpx.HTTPError:
                    status, version = 0, ""  # no answer at all
                with self._lock:
                    self.statuses[status] += 1
                    if version:
                        self.versions[version] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def admin(client: httpx.Client, method: str, path: str, body: Any = None) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.request(method, path, json=body, headers={"X-API-Key": ADMIN_KEY})
    response.raise_for_status()
    return {"step": f"{method} {path} {body or ''}".strip(), "s": time.perf_counter() - started}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dfd-lifecycle-"))
    try:
        make_repository(args.checkpoint, work / "repo")
        port = free_port()
        env = {
            "DFD_MODEL_REPOSITORY": str(work / "repo"),
            "DFD_MODEL_NAME": MODEL,
            "DFD_MODEL_VERSION": "a",
            "DFD_API_KEYS": API_KEY,
            "DFD_ADMIN_API_KEYS": ADMIN_KEY,
            "DFD_PORT": str(port),
            "DFD_LOG_LEVEL": "WARNING",
            "DFD_CACHE": "off",
            "DFD_STORE": "off",
            "DFD_RATE_LIMIT": "",
            "DFD_MAX_QUEUE_SIZE": "256",
        }
        server = ServerProcess("lifecycle", service_command(), env, work / "logs")
        image = (REPO_ROOT / "examples" / "fake_0.jpg").read_bytes()
        with running(server, 120), httpx.Client(base_url=server.base_url, timeout=120) as client:
            client.post(
                "/infer",
                content=image,
                headers={"X-API-Key": API_KEY, "content-type": "image/jpeg"},
            )
            rss_one = settled_rss(server.pid)
            steps: list[dict[str, Any]] = []
            with Load(server.base_url, image, args.clients) as load:
                time.sleep(args.step_s)
                steps.append(admin(client, "POST", f"/models/{MODEL}/versions/b/load"))
                rss_two = rss_mb(server.pid)
                for method, path, body in [
                    ("PUT", f"/models/{MODEL}/traffic", {"a": 90, "b": 10}),
                    ("PUT", f"/models/{MODEL}/traffic", {"a": 50, "b": 50}),
                    ("PUT", f"/models/{MODEL}/traffic", {"b": 100}),
                    ("POST", f"/models/{MODEL}/rollback", None),
                    ("POST", f"/models/{MODEL}/rollback", None),
                    ("POST", f"/models/{MODEL}/rollback", None),
                    ("PUT", f"/models/{MODEL}/traffic", {"b": 100}),
                ]:
                    time.sleep(args.step_s)
                    steps.append(admin(client, method, path, body))
                time.sleep(args.step_s)
                steps.append(admin(client, "POST", f"/models/{MODEL}/versions/a/unload"))
                time.sleep(args.step_s)
            server.check_alive()
            rss_two_idle = None  # measured below, after a reload of a, idle
            rss_after_unload = settled_rss(server.pid)
            admin(client, "POST", f"/models/{MODEL}/versions/a/load")
            rss_two_idle = settled_rss(server.pid)
            admin(client, "POST", f"/models/{MODEL}/versions/a/unload")
            rss_after_second_unload = settled_rss(server.pid)
        statuses = dict(load.statuses)
        answered = sum(statuses.values())
        return {
            "clients": args.clients,
            "load_average_1m": load_average(),
            "requests": answered,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "non_200": answered - statuses.get(200, 0),
            "answers_by_version": dict(load.versions),
            "steps": steps,
            "rss_mb": {
                "one_version_idle": round(rss_one, 1),
                "two_versions_just_loaded_under_load": round(rss_two, 1),
                "after_unload_idle": round(rss_after_unload, 1),
                "two_versions_idle": round(rss_two_idle, 1),
                "after_second_unload_idle": round(rss_after_second_unload, 1),
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / DEFAULT_CHECKPOINT)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--step-s", type=float, default=1.0, help="seconds between admin steps")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "lifecycle")
    args = parser.parse_args(argv)
    clean_environ()
    stop_on_signals()
    result = run(args)
    write_json(result, args.out / "lifecycle.json")
    rss = result["rss_mb"]
    print(
        f"{result['requests']} requests at c={args.clients}, non-200: {result['non_200']} "
        f"{result['statuses']}; by version {result['answers_by_version']}"
    )
    print(f"load of b took {result['steps'][0]['s']:.2f} s under load")
    print(
        "RSS MB: one version {one_version_idle}, two {two_versions_idle}, after unload "
        "{after_unload_idle} / {after_second_unload_idle}".format(**rss)
    )
    return 0 if result["non_200"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
