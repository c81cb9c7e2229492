"""How a ``python -m src.predict`` run reports: a table for a person, CSV or JSON for a program.

CSV has one flat row per file (a video's per-frame scores are in the JSON only). JSON keeps the
API's shapes: a video's ``video`` and ``frames`` entries are those of ``POST /infer/video``, a
failed file's ``error`` is ``{"code", "message"}`` as in a ``POST /infer/batch`` item.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from src.predict.scoring import FileResult, FrameResult

CSV_COLUMNS = (
    "path",
    "kind",
    "fake_prob",
    "real_prob",
    "label",
    "frames_sampled",
    "frames_scored",
    "error_code",
    "error_message",
)
OUTPUT_SUFFIXES = (".csv", ".json")


@dataclass(frozen=True)
class RunInfo:
    """What every result of one run shares."""

    checkpoint: str
    model_version: str
    backend: str
    threshold: float
    temperature: float
    face_crop: bool
    frames: int
    aggregate: str


def _prob(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def csv_text(results: Sequence[FileResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        writer.writerow(
            [
                result.path,
                result.kind,
                _prob(result.fake_prob),
                _prob(result.real_prob),
                result.label or "",
                len(result.frames) if result.kind == "video" and result.ok else "",
                result.frames_scored if result.kind == "video" and result.ok else "",
                result.error.code if result.error else "",
                result.error.message if result.error else "",
            ]
        )
    return buffer.getvalue()


def _frame_json(frame: FrameResult) -> dict[str, Any]:
    face = None
    if frame.face is not None:
        face = {"box": list(frame.face.box), "score": round(float(frame.face.score), 4)}
    return {
        "index": frame.index,
        "time_s": round(frame.time_s, 4),
        "fake_prob": frame.fake_prob,
        "face": face,
    }


def result_json(result: FileResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": result.path, "kind": result.kind}
    if result.error is not None:
        entry["error"] = {"code": result.error.code, "message": result.error.message}
        return entry
    entry.update(fake_prob=result.fake_prob, real_prob=result.real_prob, label=result.label)
    if result.video is not None:
        info = result.video
        entry["video"] = {
            "duration_s": round(info.duration_s, 4),
            "fps": round(info.fps, 4),
            "width": info.width,
            "height": info.height,
            "codec": info.codec,
            "frames_sampled": len(result.frames),
            "frames_scored": result.frames_scored,
        }
        entry["frames"] = [_frame_json(frame) for frame in result.frames]
    return entry


def json_text(results: Sequence[FileResult], run: RunInfo) -> str:
    payload = {
        **asdict(run),
        "scored": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "results": [result_json(r) for r in results],
    }
    return json.dumps(payload, indent=2) + "\n"


def table_text(results: Sequence[FileResult]) -> str:
    """Aligned columns: file, kind, fake_prob, label, frames scored/sampled, error."""
    rows = [("file", "kind", "fake_prob", "label", "frames", "error")]
    for r in results:
        frames = f"{r.frames_scored}/{len(r.frames)}" if r.kind == "video" and r.ok else ""
        prob = "" if r.fake_prob is None else f"{r.fake_prob:.4f}"
        error = f"{r.error.code}: {r.error.message}" if r.error else ""
        rows.append((r.path, r.kind, prob, r.label or "", frames, error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
