"""``python -m bench.faces``: face-detection time per 224-px face photo and per 1280x720 frame.

Images (all offline):

* ``photo224``: the repo's ``examples/*.jpg`` (224x224 face photos) and 224x224 face-centred
  crops of ``skimage.data.astronaut()`` and matplotlib's ``grace_hopper.jpg``;
* ``photo``: the astronaut (512x512) and Grace Hopper (600x512) at their own size;
* ``frame720``: 1280x720 generated scenes (``bench.frames.synthetic_frame``) with one of those
  faces pasted in at 160-480 px a side.

Each detector is timed on two calls: ``largest_face_crop(rgb, detector)`` (what the service's
preprocessing threads and the training tools call) and ``detect_faces`` (every face). Two ways
of running, each giving the median time of one call per image set:

* ``1 thread``: one thread, torch and OpenCV limited to 1 thread each (the ONNX Runtime
  sessions always use 1 thread): the median wall time and the median CPU time of the calling
  thread (all the work runs there; on a machine shared with other jobs the CPU time is the
  steadier of the two);
* ``N threads at once``: as the service runs it: ``--workers`` threads (default: the service's
  preprocessing workers) calling the one shared detector at once, torch and OpenCV at their
  defaults; the median per call and the images per second.

The detectors take turns round by round (in turn forwards and backwards), so that a burst of
outside load falls on all alike; the load average before and after is printed.

``--runtime`` picks the MTCNN runtime(s) of this tree (``onnx``, ``torch``; ``default`` = what
``FaceDetector()`` picks); ``--baseline REF`` also times ``src/media/faces.py`` and
``src/media/faces_onnx.py`` as they were at a commit (read with ``git show``; ``HEAD``: the
committed code against the working tree), and each row gets its ratio to the baseline's.
``--profile`` adds cProfile's top functions for one photo and one frame. Not part of CI: speed
targets live here, not in unit tests (see bench/README.md).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bench.frames import synthetic_frame

REPO_ROOT = Path(__file__).resolve().parents[1]
GRACE_HOPPER = "mpl-data/sample_data/grace_hopper.jpg"
# Face centres and sides (x, y, side) for the 224-px crops, checked by eye.
_ASTRONAUT_FACE = (222, 118, 120)
_GRACE_HOPPER_FACE = (256, 224, 220)
TARGETS_MS = {"photo224": 5.0, "frame720": 20.0}


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def astronaut() -> np.ndarray:
    from skimage import data as skdata

    return np.ascontiguousarray(skdata.astronaut())


def grace_hopper() -> np.ndarray:
    import matplotlib

    return _read_rgb(Path(matplotlib.__file__).parent / GRACE_HOPPER)


def _face_photo_224(rgb: np.ndarray, face: tuple[int, int, int]) -> np.ndarray:
    """A square crop twice the face's side around it, resized to 224x224 (a face photo)."""
    cx, cy, side = face
    half = side
    h, w = rgb.shape[:2]
    x0, y0 = max(0, cx - half), max(0, cy - half)
    x1, y1 = min(w, cx + half), min(h, cy + half)
    crop = rgb[y0:y1, x0:x1]
    return np.ascontiguousarray(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA))


def photos() -> dict[str, np.ndarray]:
    """The astronaut (512x512) and Grace Hopper (600x512) photos at their own size."""
    return {"astronaut": astronaut(), "grace_hopper": grace_hopper()}


def photos_224() -> dict[str, np.ndarray]:
    out = {p.stem: _read_rgb(p) for p in sorted((REPO_ROOT / "examples").glob("*.jpg"))}
    out["astronaut_224"] = _face_photo_224(astronaut(), _ASTRONAUT_FACE)
    out["grace_hopper_224"] = _face_photo_224(grace_hopper(), _GRACE_HOPPER_FACE)
    return out


def frames_720p(count: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` 1280x720 scenes, each with one demo face pasted in (160-480 px a side)."""
    rng = np.random.default_rng(seed)
    faces = [*photos_224().values(), astronaut(), grace_hopper()]
    out = {}
    for i in range(count):
        frame = synthetic_frame(rng, 1280, 720)
        face = Image.fromarray(faces[i % len(faces)])
        side = int(rng.integers(160, 481))
        scale = side / max(face.size)
        face = face.resize((round(face.width * scale), round(face.height * scale)))
        left = int(rng.integers(0, 1280 - face.width + 1))
        top = int(rng.integers(0, 720 - face.height + 1))
        frame.paste(face, (left, top))
        out[f"frame{i}"] = np.ascontiguousarray(np.asarray(frame))
    return out


def image_sets(frames: int = 6) -> dict[str, dict[str, np.ndarray]]:
    return {"photo224": photos_224(), "photo": photos(), "frame720": frames_720p(frames)}


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def make_detector(runtime: str) -> Any:
    from src.media.faces import FaceDetector

    if runtime == "default":
        return FaceDetector()
    return FaceDetector(runtime="onnx" if runtime == "onnx" else "torch")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)


def _git_show(ref: str, path: str) -> str | None:
    """The text of ``path`` at ``ref``, or None where the file did not exist then."""
    if _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise RuntimeError(f"{ref!r} is not a commit of this repository")
    if _git("cat-file", "-e", f"{ref}:{path}").returncode != 0:
        return None
    done = _git("show", f"{ref}:{path}")
    if done.returncode != 0:
        raise RuntimeError(f"git show {ref}:{path} failed: {done.stderr.strip()}")
    return done.stdout


def _load_module(name: str, folder: Path, source: str) -> ModuleType:
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# How src/media/faces.py imports its ONNX Runtime networks (since f1bbbbb).
_ONNX_IMPORT = "from src.media import faces_onnx"


def baseline_module(ref: str) -> ModuleType:
    """``src/media/faces.py`` as it was at ``ref`` (read with ``git show``), as a module.

    Where ``src/media/faces_onnx.py`` existed at ``ref``, it is loaded from ``ref`` as well
    (as ``faces_onnx_baseline``, with its own graph cache key and shared sessions) and the
    baseline's ``faces.py`` imports that one, so that ``--baseline HEAD`` compares the working
    tree with the committed code on both files.
    """
    source = _git_show(ref, "src/media/faces.py")
    if source is None:
        raise RuntimeError(f"src/media/faces.py does not exist at {ref}")
    folder = Path(tempfile.mkdtemp(prefix="bench-faces-"))
    onnx_source = _git_show(ref, "src/media/faces_onnx.py")
    if onnx_source is not None:
        if _ONNX_IMPORT not in source:
            raise RuntimeError(f"{ref}: src/media/faces.py does not import faces_onnx as expected")
        _load_module("faces_onnx_baseline", folder, onnx_source)
        source = source.replace(_ONNX_IMPORT, "import faces_onnx_baseline as faces_onnx")
    return _load_module("faces_baseline", folder, source)


def calls(module: Any, detector: Any) -> dict[str, Callable[[np.ndarray], Any]]:
    """What the service calls (``largest_face_crop`` at the default margin), and all faces."""
    return {
        "largest_face_crop": lambda rgb: module.largest_face_crop(rgb, detector),
        "detect_faces": detector.detect_faces,
    }


def time_calls(
    detect: Callable[[np.ndarray], Any], images: list[np.ndarray]
) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of the calling thread) of one call per image, one thread.

    Every detector here computes on the calling thread alone (ONNX Runtime with one intra-op
    thread; torch and OpenCV set to one thread), so its CPU time is its work, less disturbed
    by other jobs on the machine than wall time (which also counts the time it waited for a
    core).
    """
    wall, cpu = [], []
    for image in images:
        start, start_cpu = time.perf_counter(), time.thread_time()
        detect(image)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return wall, cpu


def time_threads(
    detect: Callable[[np.ndarray], Any], images: list[np.ndarray], workers: int
) -> tuple[list[float], float]:
    """(seconds of each call, wall seconds): ``workers`` threads each calling once per image."""
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(workers + 1)

    def work(offset: int) -> None:
        mine = []
        barrier.wait()
        for k in range(len(images)):
            image = images[(k + offset) % len(images)]
            start = time.perf_counter()
            detect(image)
            mine.append(time.perf_counter() - start)
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return times, time.perf_counter() - start


def profile(detect: Callable[[np.ndarray], Any], image: np.ndarray, calls: int, top: int) -> str:
    detect(image)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        detect(image)
    prof.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(prof, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


def _load_average() -> str:
    """The 1-, 5- and 15-minute load averages (other jobs on the machine skew the times)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _set_threads(single: bool) -> None:
    import torch

    from src.core.device import available_cpus

    torch.set_num_threads(1 if single else available_cpus())
    cv2.setNumThreads(1 if single else -1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from src.core.device import available_cpus

    parser = argparse.ArgumentParser(
        prog="python -m bench.faces", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--runtime", nargs="*", default=["default"], choices=["default", "onnx", "torch"]
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also time src/media/faces.py and faces_onnx.py as they were at this commit "
        "(its default detector; HEAD: the committed code)",
    )
    parser.add_argument(
        "--rounds", type=int, default=20, help="passes over each image set, per way of running"
    )
    parser.add_argument("--frames", type=int, default=6, help="1280x720 frames to make")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, min(8, available_cpus())),
        help="threads for the service-shaped run (the service's default)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one photo and one frame")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


Subject = tuple[str, Callable[[np.ndarray], Any]]


def measure(
    subjects: list[Subject], sets: dict[str, dict[str, np.ndarray]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Medians per subject and image set, the subjects interleaved round by round (in turn
    forwards and backwards), so that a burst of outside load falls on all of them alike."""
    one: dict[tuple[str, str], list[float]] = {}
    one_cpu: dict[tuple[str, str], list[float]] = {}
    many: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], float] = {}
    _set_threads(single=True)
    for _, fn in subjects:  # warm-up: first calls build sessions, kernels and caches
        for images in sets.values():
            time_calls(fn, list(images.values()))
    for turn in range(args.rounds):
        for name, fn in subjects if turn % 2 == 0 else subjects[::-1]:
            for set_name, images in sets.items():
                times, cpu = time_calls(fn, list(images.values()))
                one.setdefault((name, set_name), []).extend(times)
                one_cpu.setdefault((name, set_name), []).extend(cpu)
    _set_threads(single=False)
    for turn in range(args.rounds):
        for name, fn in subjects if turn % 2 == 0 else subjects[::-1]:
            for set_name, images in sets.items():
                times, seconds = time_threads(fn, list(images.values()), args.workers)
                many.setdefault((name, set_name), []).extend(times)
                wall[(name, set_name)] = wall.get((name, set_name), 0.0) + seconds
    results: dict[str, dict[str, float]] = {}
    for name, _ in subjects:
        row = results.setdefault(name, {})
        for set_name in sets:
            key = (name, set_name)
            row[f"{set_name}_1thread_ms"] = 1000 * statistics.median(one[key])
            row[f"{set_name}_1thread_cpu_ms"] = 1000 * statistics.median(one_cpu[key])
            row[f"{set_name}_service_ms"] = 1000 * statistics.median(many[key])
            row[f"{set_name}_service_img_s"] = len(many[key]) / wall[key]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sets = image_sets(args.frames)
    detectors: list[tuple[str, Any, Any]] = []
    if args.baseline:
        module = baseline_module(args.baseline)
        detector = module.FaceDetector()
        runtime = getattr(detector, "runtime", None) or "torch"
        detectors.append((f"{args.baseline} ({runtime})", module, detector))
    from src.media import faces

    for runtime in args.runtime:
        detector = make_detector(runtime)
        detectors.append((f"this tree, {runtime} ({detector.runtime})", faces, detector))
    subjects = [
        (f"{name}: {call}", fn)
        for name, module, detector in detectors
        for call, fn in calls(module, detector).items()
    ]
    load_before = _load_average()
    results = measure(subjects, sets, args)
    if args.profile:
        _set_threads(single=True)
        for name, fn in subjects:
            print(f"== {name}, profile, examples/real_0.jpg x 200")
            print(profile(fn, sets["photo224"]["real_0"], 200, 18))
            print(f"== {name}, profile, frame0 x 20")
            print(profile(fn, sets["frame720"]["frame0"], 20, 18))
    load_after = _load_average()
    print(f"1-, 5-, 15-minute load average: {load_before} before, {load_after} after")
    print(report(results, args.workers, args.baseline))
    if args.json:
        out = {"load_average": {"before": load_before, "after": load_after}, "results": results}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def report(results: dict[str, dict[str, float]], workers: int, baseline: str | None = None) -> str:
    """The table; with ``baseline`` (a detector name prefix), each row's 1-thread median wall
    and CPU time over the baseline's for the same call and image set."""
    ratio_head = " | vs baseline, 1 thread (wall, CPU)" if baseline else ""
    lines = [
        f"| detector: call | set | 1 thread, median ms | 1 thread, median CPU ms | "
        f"{workers} threads at once, median ms | {workers} threads, img/s | target ms"
        f"{ratio_head} |",
        "|---|---|---|---|---|---|---|" + ("---|" if baseline else ""),
    ]
    for name, row in results.items():
        call = name.rsplit(": ", 1)[-1]
        base = next(
            (
                r
                for n, r in results.items()
                if baseline and n.startswith(baseline) and n.endswith(f": {call}")
            ),
            None,
        )
        for set_name in ("photo224", "photo", "frame720"):
            target = TARGETS_MS.get(set_name)
            line = (
                f"| {name} | {set_name} | {row[f'{set_name}_1thread_ms']:.1f} | "
                f"{row[f'{set_name}_1thread_cpu_ms']:.1f} | "
                f"{row[f'{set_name}_service_ms']:.1f} | {row[f'{set_name}_service_img_s']:.0f} | "
                f"{'' if target is None else f'{target:g}'} |"
            )
            if baseline:
                if base is None:
                    line += " |"
                else:
                    wall = row[f"{set_name}_1thread_ms"] / base[f"{set_name}_1thread_ms"]
                    cpu = row[f"{set_name}_1thread_cpu_ms"] / base[f"{set_name}_1thread_cpu_ms"]
                    line += f" {wall:.2f}, {cpu:.2f} |"
            lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
