"""Write MTCNN's ONNX graphs into a cache folder for the torch-free image, after a parity check.

Run in the Dockerfile's ``models`` stage (which has torch): ``python face_detector_onnx.py DIR``.
The graphs are built from the weights of the facenet-pytorch wheel
(:func:`src.media.faces_onnx.load_graphs`, keyed by the weights' SHA-256) into
``DIR/<key>/{pnet,rnet,onet}.onnx``; the runtime image points ``MTCNN_ONNX_CACHE`` at ``DIR``, so
the service reads them at start instead of building them in memory (its root file system is
read-only).

Nothing is kept unless ONNX Runtime and torch agree: each network on random inputs (as
``tests/unit/media/test_face_detector_speed_parity.py`` checks them, ``atol`` 2e-5), and the
whole detector on ``examples/*.jpg`` (the same faces, boxes within 1 px, scores within 1e-4).
Exits 2 with the figures when they do not.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# Run as a file (deploy/docker/...): the repository root holds src/ and examples/.
REPO_ROOT = Path(__file__).resolve().parents[2]
NET_ATOL = 2e-5
BOX_ATOL_PX = 1.0
SCORE_ATOL = 1e-4


def _net_differences(onnx_nets: object, torch_nets: object) -> float:
    rng = np.random.default_rng(1)
    worst = 0.0
    calls = [("pnet", rng.uniform(0, 255, (61, 87, 3)).astype(np.float32))]
    for n in (1, 5, 37):  # 37: more than one R-Net chunk
        calls.append(("rnet", rng.uniform(0, 255, (n, 24, 24, 3)).astype(np.float32)))
        calls.append(("onet", rng.uniform(0, 255, (n, 48, 48, 3)).astype(np.float32)))
    for name, x in calls:
        for a, b in zip(getattr(onnx_nets, name)(x), getattr(torch_nets, name)(x), strict=True):
            if a.shape != b.shape:
                raise SystemExit(f"{name}: shape {a.shape} (onnx) != {b.shape} (torch)")
            worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} CACHE_DIR", file=sys.stderr)
        return 2
    cache = Path(argv[1])
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["MTCNN_ONNX_CACHE"] = str(cache)

    sys.path.insert(0, str(REPO_ROOT))
    from src.media import faces, faces_onnx

    weights = faces._mtcnn_weight_dir()
    if weights is None:
        print("MTCNN weights not found (pip install --no-deps facenet-pytorch)", file=sys.stderr)
        return 2
    faces_onnx.load_graphs(weights, cache=cache, rebuild=True)
    (folder,) = cache.iterdir()
    onnx_det = faces.FaceDetector(backend="mtcnn", runtime="onnx")
    torch_det = faces.FaceDetector(backend="mtcnn", runtime="torch")
    net_diff = _net_differences(onnx_det._nets, torch_det._nets)
    print(f"MTCNN networks, ONNX Runtime vs torch: max |difference| {net_diff:.2e}")
    failed = net_diff > NET_ATOL

    examples = sorted((REPO_ROOT / "examples").glob("*.jpg"))
    if not examples:
        print("no examples/*.jpg to compare the detectors on", file=sys.stderr)
        return 2
    for path in examples:
        with Image.open(path) as image:
            rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        a, b = onnx_det.detect_faces(rgb), torch_det.detect_faces(rgb)
        pairs = list(zip(a, b, strict=False))
        box = max((float(np.abs(np.subtract(x.box, y.box)).max()) for x, y in pairs), default=0.0)
        score = max((abs(x.score - y.score) for x, y in pairs), default=0.0)
        ok = len(a) == len(b) > 0 and box <= BOX_ATOL_PX and score <= SCORE_ATOL
        failed |= not ok
        print(
            f"{path.name}: {len(a)} face(s) (onnx) / {len(b)} (torch), max box difference "
            f"{box:g} px, max score difference {score:.1e}{'' if ok else '  <- MISMATCH'}"
        )
    if failed:
        print(
            f"error: the ONNX face detector disagrees with torch (networks atol {NET_ATOL:g}, "
            f"boxes {BOX_ATOL_PX:g} px, scores {SCORE_ATOL:g}); nothing kept",
            file=sys.stderr,
        )
        shutil.rmtree(cache, ignore_errors=True)
        return 2
    for path in sorted(folder.iterdir()):
        path.chmod(0o644)
    print(f"wrote {', '.join(p.name for p in sorted(folder.iterdir()))} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
