"""``python -m bench.footprint``: what the serving process costs to hold: seconds from start to
``/ready``, resident memory when ready and after an image and a video, and whether torch was
imported, for the demo model on ONNX Runtime.

``--python`` picks the interpreter, so the same measurement runs in this repository's venv (torch
installed, not imported) and in a venv made from ``requirements-serve.txt`` alone (no torch):

    python3 -m venv /tmp/serve-venv
    /tmp/serve-venv/bin/pip install -r requirements-serve.txt httpx
    /tmp/serve-venv/bin/pip install --no-deps -r requirements-nodeps.txt
    .venv/bin/python -m bench.footprint --python /tmp/serve-venv/bin/python

The server runs from this checkout with ``PYTHONPATH`` set; the model must have its ONNX export
(``make run`` or ``python -m src.export --checkpoint PATH`` makes it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.procs import API_KEY, REPO_ROOT, free_port, rss_mb
from src.core.settings import DEFAULT_CHECKPOINT


def measure(python: str, checkpoint: Path, ready_timeout_s: float = 120.0) -> dict[str, object]:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="dfd-footprint-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DFD_")},
        "PYTHONPATH": str(REPO_ROOT),
        "DFD_CHECKPOINT_PATH": str(checkpoint),
        "DFD_BACKEND": "onnxruntime",
        "DFD_API_KEYS": API_KEY,
        "DFD_PORT": str(port),
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_DATABASE_URL": f"sqlite:///{data / 'store.db'}",
        "DFD_SPOOL_PATH": str(data / "spool.jsonl"),
        "DFD_JOBS_DIR": str(data / "jobs"),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "src.serve"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{python} -m src.serve exited with {process.returncode}")
            if time.perf_counter() - started > ready_timeout_s:
                raise RuntimeError("the server never became ready")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
        idle_mb = rss_mb(process.pid)
        headers = {"X-API-Key": API_KEY}
        examples = REPO_ROOT / "examples"
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            image = client.post("/infer", files={"file": (examples / "fake_0.jpg").read_bytes()})
            video = client.post(
                "/infer/video", files={"file": (examples / "fake_0.mp4").read_bytes()}
            )
        loaded = _torch_loaded(process.pid)
        return {
            "python": python,
            "ready_s": round(ready_s, 2),
            "rss_ready_mb": round(idle_mb, 1),
            "rss_after_requests_mb": round(rss_mb(process.pid), 1),
            "statuses": [image.status_code, video.status_code],
            "torch_mapped": loaded,
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def _torch_loaded(pid: int) -> bool:
    """Whether the process has torch's library mapped (it was imported)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="interpreter(s); default: this one")
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / DEFAULT_CHECKPOINT)
    args = parser.parse_args(argv)
    for python in args.python or [sys.executable]:
        print(json.dumps(measure(python, args.checkpoint)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
