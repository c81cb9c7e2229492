"""Videos and batches on a real server process: the demo model's verdict on the example videos,
and no temporary file left behind by any request, failed and abandoned ones included."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from src.core.settings import DEFAULT_CHECKPOINT
from tests.helpers import REPO_ROOT
from tests.helpers.api import AUTH
from tests.helpers.server import free_port, start_server, stop_server, wait_ready
from tests.helpers.videos import truncated, video_bytes

pytestmark = pytest.mark.slow


def _noise_png(side: int, seed: int) -> bytes:
    """A PNG of noise, over 1 MB: big enough that the multipart parser spools it to disk."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _open_files_under(pid: int, folder: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def _abandon_upload(port: int, path: str, declared: int) -> None:
    """Send the head and part of a body, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        boundary = "b0undary"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {AUTH['X-API-Key']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {declared}\r\n\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\x89PNG" + os.urandom(1_500_000))


def test_example_videos_and_no_temporary_file_survives(tmp_path: Path) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(
        REPO_ROOT / DEFAULT_CHECKPOINT,
        port,
        TMPDIR=str(private_tmp),
        DFD_BACKEND="torch",
        DFD_MAX_UPLOAD_BYTES=str(4 * 1024 * 1024),
    )
    try:
        wait_ready(base, process)
        # What the process made at start (ONNX Runtime keeps a small .ses file there) is not a
        # request's; everything a request makes must be gone once it has ended.
        at_start = set(private_tmp.iterdir())
        with httpx.Client(base_url=base, headers=AUTH, timeout=120) as client:
            verdicts = {}
            for name in ("real_0", "fake_0"):
                data = (REPO_ROOT / "examples" / f"{name}.mp4").read_bytes()
                response = client.post(
                    "/infer/video?frames=16", files={"file": (f"{name}.mp4", data, "video/mp4")}
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["video"]["frames_scored"] >= 12
                verdicts[name] = body
            assert verdicts["fake_0"]["label"] == "fake"
            assert verdicts["real_0"]["label"] == "real"
            assert verdicts["fake_0"]["fake_prob"] > verdicts["real_0"]["fake_prob"] + 0.3

            big = [_noise_png(700, seed) for seed in range(2)]
            assert all(len(data) > 1024 * 1024 for data in big)
            batch = client.post(
                "/infer/batch",
                files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(big)],
            )
            assert batch.status_code == 200, batch.text  # scored, or no_face_detected items
            assert len(batch.json()["results"]) == 2
            bad = client.post(
                "/infer/video",
                files={"file": ("cut.mp4", truncated(video_bytes(), 0.4), "video/mp4")},
            )
            assert bad.status_code == 422, bad.text
        _abandon_upload(port, "/infer/batch", declared=3_000_000)
        _abandon_upload(port, "/infer/video", declared=3_000_000)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/ready").status_code == 200
        assert set(private_tmp.iterdir()) == at_start
        assert _open_files_under(process.pid, private_tmp) == []
    finally:
        stop_server(process)
