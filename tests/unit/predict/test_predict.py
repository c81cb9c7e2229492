"""``python -m src.predict``: images, videos and folders scored offline with the service's parts;
per-file errors, the three output forms, exit codes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from src.core.aggregate import aggregate
from src.predict import Predictor, find_media
from src.predict.__main__ import main
from tests.helpers import REPO_ROOT
from tests.helpers.api import AUTH
from tests.helpers.backends import ScriptedBackend
from tests.helpers.images import image_bytes, infer_files
from tests.helpers.videos import face_video_bytes, truncated, video_bytes

EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """Two images and two videos (one in a sub-folder), plus files a folder scan skips."""
    root = tmp_path / "media"
    (root / "clips" / ".cache").mkdir(parents=True)
    (root / "a.jpg").write_bytes(image_bytes("JPEG", (64, 48), seed=1))
    (root / "b.PNG").write_bytes(image_bytes("PNG", (80, 60), seed=2))
    (root / "clips" / "c.mp4").write_bytes(video_bytes("mp4", frames=20, fps=10))
    (root / "clips" / "d.webm").write_bytes(video_bytes("webm", frames=12, fps=6))
    (root / "notes.txt").write_text("not media")
    (root / "clips" / ".cache" / "e.jpg").write_bytes(image_bytes())
    return root


def _run_json(tmp_path: Path, checkpoint: Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp_path / "out" / "results.json"
    options = ["--checkpoint", str(checkpoint), "--backend", "torch", "--device", "cpu"]
    code = main([*args, *options, "--out", str(out), "--no-progress"])
    return code, json.loads(out.read_text())


def test_a_folder_is_searched_recursively_for_media_and_each_file_taken_once(media: Path) -> None:
    found = find_media([media, media / "a.jpg", media / "notes.txt"])
    names = [p.relative_to(media).as_posix() for p in found]
    assert names == ["a.jpg", "b.PNG", "clips/c.mp4", "clips/d.webm", "notes.txt"]


def test_images_and_videos_are_scored_with_their_verdicts_and_frames(
    media: Path, tmp_path: Path, checkpoint_path: Path
) -> None:
    code, payload = _run_json(tmp_path, checkpoint_path, str(media), "--frames", "8")
    assert code == 0
    assert (payload["scored"], payload["failed"]) == (4, 0)
    assert payload["backend"] == "torch" and payload["frames"] == 8
    assert payload["aggregate"] == "confident" and payload["face_crop"] is False
    by_name = {Path(r["path"]).name: r for r in payload["results"]}
    assert [by_name[n]["kind"] for n in ("a.jpg", "b.PNG", "c.mp4", "d.webm")] == [
        "image",
        "image",
        "video",
        "video",
    ]
    threshold = payload["threshold"]
    for result in payload["results"]:
        assert 0.0 <= result["fake_prob"] <= 1.0
        assert result["real_prob"] == pytest.approx(1.0 - result["fake_prob"])
        assert result["label"] == ("fake" if result["fake_prob"] >= threshold else "real")
    clip = by_name["c.mp4"]
    assert clip["video"]["frames_sampled"] == 8 == clip["video"]["frames_scored"]
    assert clip["video"]["codec"] == "h264" and clip["video"]["width"] == 128
    times = [frame["time_s"] for frame in clip["frames"]]
    assert times == sorted(times) and times[0] < 0.3 and times[-1] > 1.6  # spread over 2 s
    assert all(frame["face"] is None for frame in clip["frames"])
    assert by_name["d.webm"]["video"]["frames_sampled"] == 8


@pytest.mark.parametrize("rule", ["mean", "max", "confident"])
def test_a_videos_score_is_its_frames_aggregated_by_the_rule(
    media: Path, tmp_path: Path, checkpoint_path: Path, rule: str
) -> None:
    video = media / "clips" / "c.mp4"
    code, payload = _run_json(tmp_path, checkpoint_path, str(video), "--aggregate", rule)
    assert code == 0
    (result,) = payload["results"]
    frames = [frame["fake_prob"] for frame in result["frames"]]
    assert len(frames) == 20  # 32 asked, the clip holds 20
    assert result["fake_prob"] == pytest.approx(aggregate(frames, rule))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_an_image_scores_exactly_as_the_service_answers_it(
    client: httpx.AsyncClient, tmp_path: Path, checkpoint_path: Path
) -> None:
    data = image_bytes("JPEG", (120, 90), seed=5)
    (tmp_path / "x.jpg").write_bytes(data)
    response = await client.post("/infer", files=infer_files(data), headers=AUTH)
    assert response.status_code == 200, response.text
    _, payload = _run_json(tmp_path, checkpoint_path, str(tmp_path / "x.jpg"))
    assert payload["results"][0]["fake_prob"] == pytest.approx(
        response.json()["fake_prob"], abs=1e-6
    )


def test_bad_files_are_reported_one_by_one_and_the_rest_still_scored(
    media: Path, tmp_path: Path, checkpoint_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("this is not an image")
    (bad / "empty.png").write_bytes(b"")
    clip = video_bytes("mp4", frames=20)
    (bad / "cut.mp4").write_bytes(truncated(clip, 0.4))
    (bad / "broken.jpg").write_bytes(image_bytes("JPEG", (64, 48))[:200])
    args = [str(media / "a.jpg"), str(bad), str(tmp_path / "missing.mp4"), str(media / "b.PNG")]
    code, payload = _run_json(tmp_path, checkpoint_path, *args)
    assert code == 1
    errors = {Path(r["path"]).name: r["error"]["code"] for r in payload["results"] if "error" in r}
    assert errors == {
        "broken.jpg": "invalid_image",
        "cut.mp4": "invalid_video",
        "empty.png": "empty_file",
        "text.jpg": "unsupported_media_type",
        "missing.mp4": "not_found",
    }
    scored = [Path(r["path"]).name for r in payload["results"] if "error" not in r]
    assert scored == ["a.jpg", "b.PNG"]
    assert (payload["scored"], payload["failed"]) == (2, 5)
    messages = [r["error"]["message"] for r in payload["results"] if "error" in r]
    assert all(messages)


def test_a_file_the_model_fails_on_fails_alone(media: Path, checkpoint_path: Path) -> None:
    backend = ScriptedBackend(checkpoint_path)
    predictor = Predictor(backend, batch_size=4)
    white = media / "white.png"
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(white)
    backend.poison_mean_above = 250.0
    results = list(predictor.predict([media / "a.jpg", white, media / "b.PNG"]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and results[1].error.code == "inference_error"
    assert "poisoned input" in results[1].error.message


def test_the_face_crop_follows_the_face_and_no_face_is_an_error(
    tmp_path: Path, checkpoint_path: Path
) -> None:
    (tmp_path / "face.mp4").write_bytes(face_video_bytes(faces=1, frames=6))
    (tmp_path / "blank.mp4").write_bytes(video_bytes("mp4", frames=6))
    code, payload = _run_json(
        tmp_path,
        checkpoint_path,
        str(tmp_path / "face.mp4"),
        str(tmp_path / "blank.mp4"),
        "--face-crop",
        "on",
        "--frames",
        "4",
    )
    assert code == 1 and payload["face_crop"] is True
    face, blank = payload["results"]
    assert face["video"]["frames_scored"] == 4
    for frame in face["frames"]:
        x, _, w, h = frame["face"]["box"]
        assert 0 <= x < 200 and w > 60 and h > 60  # the astronaut's head on the left
    assert blank["error"]["code"] == "no_face_detected"


def test_csv_has_one_row_per_file_and_the_table_goes_to_stdout(
    media: Path, tmp_path: Path, checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (media / "bad.jpg").write_text("nope")
    out = tmp_path / "results.csv"
    common = ["--checkpoint", str(checkpoint_path), "--backend", "torch", "--device", "cpu"]
    assert main([str(media), *common, "--out", str(out), "--no-progress", "--frames", "4"]) == 1
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.PNG", "bad.jpg", "c.mp4", "d.webm"]
    assert rows[2]["error_code"] == "unsupported_media_type" and rows[2]["fake_prob"] == ""
    assert rows[3]["frames_sampled"] == "4" and float(rows[3]["fake_prob"]) >= 0.0
    capsys.readouterr()

    assert main([str(media / "a.jpg"), *common]) == 0  # progress bar on, no --out
    captured = capsys.readouterr()
    header, row = captured.out.splitlines()
    assert header.split() == ["file", "kind", "fake_prob", "label", "frames", "error"]
    assert row.split()[:2] == [str(media / "a.jpg"), "image"]
    assert "1 of 1 files scored" in captured.err


def test_usage_errors_exit_2(
    tmp_path: Path, checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(image_bytes())
    with pytest.raises(SystemExit) as exited:
        main([str(image), "--out", str(tmp_path / "results.txt")])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main([str(image), "--frames", "0"])
    assert exited.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--checkpoint", str(checkpoint_path)]) == 2
    assert "no image or video files" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main([str(image), "--checkpoint", str(missing), "--no-progress"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([str(image), "--checkpoint", str(checkpoint_path), "--backend", "onnxruntime"]) == 2
    assert "export" in capsys.readouterr().err


def test_the_onnx_export_is_used_when_it_matches_and_answers_as_torch(
    tmp_path: Path, checkpoint_path: Path
) -> None:
    from src.export import export_onnx

    checkpoint = Path(shutil.copy(checkpoint_path, tmp_path / "model.pt"))
    export_onnx(checkpoint)
    image = tmp_path / "a.jpg"
    image.write_bytes(image_bytes(seed=9))
    out = tmp_path / "r.json"
    base = [str(image), "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(out)]) == 0
    auto = json.loads(out.read_text())
    assert main([*base, "--backend", "torch", "--out", str(out)]) == 0
    torch_run = json.loads(out.read_text())
    assert auto["backend"] == "onnxruntime"
    assert auto["results"][0]["fake_prob"] == pytest.approx(
        torch_run["results"][0]["fake_prob"], abs=1e-4
    )
