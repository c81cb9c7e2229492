"""Run a script that builds the app on ONNX Runtime in a fresh interpreter (the test process
has torch loaded already), and read the JSON report it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO_ROOT


def run_onnx_app_script(
    script: str,
    checkpoint: Path,
    folder: Path,
    *args: str,
    timeout: float = 180,
    **settings: str,
) -> dict[str, Any]:
    """``python -c script *args`` with a minimal environment: the checkpoint (exported to ONNX)
    on ``DFD_BACKEND=onnxruntime`` with face crop on, the store's files under ``folder``, plus
    ``settings``. Fails the test when the script does; returns its last stdout line as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "DFD_CHECKPOINT_PATH": str(checkpoint),
        "DFD_BACKEND": "onnxruntime",
        "DFD_DEVICE": "auto",
        "DFD_FACE_CROP": "on",
        "DFD_DATABASE_URL": f"sqlite:///{folder / 'store.db'}",
        "DFD_SPOOL_PATH": str(folder / "spool.jsonl"),
        "DFD_JOBS_DIR": str(folder / "jobs"),
        "DFD_LOG_LEVEL": "WARNING",
        **settings,
    }
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report
