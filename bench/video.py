"""``python -m bench.video``: videos and batches on the demo model, face crops on.

Three measurements, on one service process (``DFD_BACKEND``, default auto: ONNX Runtime when
the demo model's export is there):

* **video**: a 10-second 1280x720 30 fps H.264 clip (generated: a face photo from
  ``examples/`` drifting over a generated scene), ``POST /infer/video?frames=32`` from upload to
  answer, ``--rounds`` times: the p50 wall time (target: at most 2.5 s) and the median of each
  stage the answer reports (decode, detect, inference).
* **fairness**: single-image ``/infer`` latency at rest, and while a video is being scored
  (videos sent back to back in a thread): the p50 ratio (target: at most 3x).
* **batch**: 32 face images in one ``/infer/batch`` request against the same 32 sent one by
  one at concurrency 1, interleaved round by round: the throughput ratio (target: >= 1.2x).

Not part of CI (speed targets live here, not in unit tests); writes ``--out``/video.json and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from PIL import Image

from bench.frames import load_frames, synthetic_frame
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    ServerProcess,
    clean_environ,
    free_port,
    service_command,
)
from src.core.settings import DEFAULT_CHECKPOINT

TARGETS = {"video_p50_s": 2.5, "fairness_ratio": 3.0, "batch_speedup": 1.2}
HEADERS = {"X-API-Key": API_KEY}


def clip_720p(seconds: float = 10.0, fps: int = 30, seed: int = 0) -> bytes:
    """An H.264 MP4, 1280x720: ``examples/real_0.jpg``'s face (~300 px) drifting across a
    generated scene, with a little zoom, so every frame differs as in a real video."""
    rng = np.random.default_rng(seed)
    scene = np.asarray(synthetic_frame(rng, 1280, 720).convert("RGB"))
    with Image.open(REPO_ROOT / "examples" / "real_0.jpg") as face_image:
        face = face_image.convert("RGB")
    frames = int(seconds * fps)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for i in range(frames):
            t = i / max(1, frames - 1)
            side = int(280 + 40 * np.sin(2 * np.pi * t))
            patch = np.asarray(face.resize((side, side)))
            x, y = int(200 + 700 * t), int(180 + 60 * np.sin(4 * np.pi * t))
            frame = scene.copy()
            frame[y : y + side, x : x + side] = patch
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return buffer.getvalue()


def post_video(client: httpx.Client, clip: bytes, frames: int) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.post(
        f"/infer/video?frames={frames}", files={"file": ("clip.mp4", clip, "video/mp4")}
    )
    response.raise_for_status()
    return {"wall_s": time.perf_counter() - started, **response.json()["timings"]}


def post_image(client: httpx.Client, image: bytes) -> float:
    started = time.perf_counter()
    response = client.post("/infer", files={"file": ("f.jpg", image, "image/jpeg")})
    if response.status_code not in (200, 422):  # 422: no face in this generated frame
        response.raise_for_status()
    return time.perf_counter() - started


def measure_video(client: httpx.Client, clip: bytes, rounds: int, frames: int) -> dict[str, Any]:
    post_video(client, clip, frames)  # warm-up
    runs = [post_video(client, clip, frames) for _ in range(rounds)]
    return {
        "rounds": rounds,
        "frames": frames,
        "clip_bytes": len(clip),
        "p50_s": statistics.median(r["wall_s"] for r in runs),
        "max_s": max(r["wall_s"] for r in runs),
        **{
            f"{stage}_p50_ms": statistics.median(r[stage] for r in runs)
            for stage in ("decode_ms", "detect_ms", "inference_ms", "total_ms")
        },
    }


def measure_fairness(
    client: httpx.Client, base: str, clip: bytes, images: list[bytes], frames: int
) -> dict[str, Any]:
    idle = [post_image(client, images[i % len(images)]) for i in range(40)]
    stop = threading.Event()
    videos = 0

    def send_videos() -> None:
        nonlocal videos
        with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as video_client:
            while not stop.is_set():
                post_video(video_client, clip, frames)
                videos += 1

    thread = threading.Thread(target=send_videos)
    thread.start()
    time.sleep(0.3)
    try:
        busy = [post_image(client, images[i % len(images)]) for i in range(80)]
    finally:
        stop.set()
        thread.join()
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    return {
        "idle_p50_ms": idle_p50 * 1000,
        "during_video_p50_ms": busy_p50 * 1000,
        "during_video_p90_ms": statistics.quantiles(busy, n=10)[-1] * 1000,
        "ratio": busy_p50 / idle_p50,
        "videos_during": videos,
    }


def measure_batch(client: httpx.Client, images: list[bytes], rounds: int) -> dict[str, Any]:
    files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    client.post("/infer/batch", files=files).raise_for_status()  # warm-up
    batch_ips, single_ips = [], []
    for _ in range(rounds):  # interleaved: outside load falls on both alike
        started = time.perf_counter()
        client.post("/infer/batch", files=files).raise_for_status()
        batch_ips.append(len(images) / (time.perf_counter() - started))
        started = time.perf_counter()
        for data in images:
            post_image(client, data)
        single_ips.append(len(images) / (time.perf_counter() - started))
    ratios = [b / s for b, s in zip(batch_ips, single_ips, strict=True)]
    return {
        "images": len(images),
        "rounds": rounds,
        "batch_images_per_s": statistics.median(batch_ips),
        "one_by_one_images_per_s": statistics.median(single_ips),
        "speedup": statistics.median(ratios),
    }


def report(results: dict[str, Any]) -> str:
    video, fair, batch = results["video"], results["fairness"], results["batch"]
    rows = [
        "| measurement | value | target |",
        "| --- | --- | --- |",
        f"| video, {video['frames']} frames of 10 s 1280x720 H.264: p50 upload-to-answer | "
        f"{video['p50_s']:.2f} s | <= {TARGETS['video_p50_s']} s |",
        f"| ... decode p50 | {video['decode_ms_p50_ms']:.0f} ms | |",
        f"| ... face detection, tracking, crops p50 | {video['detect_ms_p50_ms']:.0f} ms | |",
        f"| ... inference (first crop queued to last scored) p50 | "
        f"{video['inference_ms_p50_ms']:.0f} ms | |",
        f"| single image p50 at rest / while videos are scored | "
        f"{fair['idle_p50_ms']:.1f} / {fair['during_video_p50_ms']:.1f} ms "
        f"({fair['ratio']:.2f}x) | <= {TARGETS['fairness_ratio']}x |",
        f"| batch of {batch['images']} vs one by one (c=1), throughput | "
        f"{batch['batch_images_per_s']:.1f} vs {batch['one_by_one_images_per_s']:.1f} img/s "
        f"({batch['speedup']:.2f}x) | >= {TARGETS['batch_speedup']}x |",
    ]
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / DEFAULT_CHECKPOINT)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/video")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clean_environ()
    args.out.mkdir(parents=True, exist_ok=True)
    clip = clip_720p()
    images = load_frames(REPO_ROOT / "examples", count=32)
    port = free_port()
    env = {
        "DFD_CHECKPOINT_PATH": str(args.checkpoint),
        "DFD_API_KEYS": API_KEY,
        "DFD_PORT": str(port),
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_BACKEND": args.backend,
        # Every answer is computed: the result cache would answer the repeated images itself.
        "DFD_CACHE": "off",
    }
    server = ServerProcess("video", service_command(), env, args.out)
    server.start(ready_timeout_s=180)
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=120) as client:
            backend = client.get("/ready").json()["backend"]
            results = {
                "backend": backend,
                "video": measure_video(client, clip, args.rounds, args.frames),
                "fairness": measure_fairness(client, server.base_url, clip, images, args.frames),
                "batch": measure_batch(client, images, args.rounds),
                "targets": TARGETS,
            }
    finally:
        server.stop()
    (args.out / "video.json").write_text(json.dumps(results, indent=2))
    print(f"backend: {results['backend']}")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
