"""``python -m src.train.evaluate --videos DIR``: DeepfakeBench's real/fake folders scored frame by
frame and per aggregation rule, the metrics computed from the scores."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from src.core.aggregate import AGGREGATE_RULES
from src.core.errors import DatasetError
from src.models.backends.base import BackendInfo, FrameScore
from src.models.checkpoint import ModelMetadata
from src.train import evaluate as evaluate_cli
from src.train.bootstrap import BootstrapOptions
from src.train.evaluate import format_video_table
from src.train.video_eval import LEVEL_METRICS, evaluate_videos, load_videos
from tests.helpers.videos import truncated, video_bytes

LEVELS = ["frame", *(f"video_{rule}" for rule in AGGREGATE_RULES)]


def _flat(level: int):  # type: ignore[no-untyped-def]
    def make(index: int, width: int, height: int) -> np.ndarray:
        return np.full((height, width, 3), level + (index % 3) * 4, np.uint8)

    return make


class BrightnessBackend:
    """Scores a crop by its mean brightness: bright frames "fake", dark ones "real"."""

    def __init__(self, invert: bool = False, constant: float | None = None) -> None:
        self.invert = invert
        self.constant = constant
        self._metadata = ModelMetadata(architecture="stub", input_size=32)

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def describe(self) -> BackendInfo:
        return BackendInfo(backend="stub", device="cpu", metadata=self.metadata)

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        del batch_sizes

    def score(self, crops: Sequence[np.ndarray]) -> list[FrameScore]:
        if self.constant is not None:
            return [FrameScore(self.constant) for _ in crops]
        probs = [float(crop.mean()) / 255.0 for crop in crops]
        return [FrameScore(1.0 - p if self.invert else p) for p in probs]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 dark "real" and 3 bright "fake" clips (one fake in a sub-folder), one corrupt real."""
    root = tmp_path_factory.mktemp("videos")
    (root / "real").mkdir()
    (root / "fake" / "batch2").mkdir(parents=True)
    for k in range(3):
        (root / "real" / f"r{k}.mp4").write_bytes(
            video_bytes("mp4", frames=12, fps=6, maker=_flat(30 + 10 * k))
        )
        folder = root / "fake" / ("batch2" if k == 2 else "")
        (folder / f"f{k}.webm").write_bytes(
            video_bytes("webm", frames=12, fps=6, maker=_flat(170 + 10 * k))
        )
    (root / "real" / "broken.mp4").write_bytes(truncated(video_bytes("mp4", frames=12), 0.3))
    (root / "real" / "notes.txt").write_text("skipped")
    return root


def test_the_folder_follows_deepfakebenchs_real_fake_layout(video_dir: Path) -> None:
    videos = load_videos(video_dir)
    assert [(v.path.relative_to(video_dir).as_posix(), v.label) for v in videos] == [
        ("real/broken.mp4", 0),
        ("real/r0.mp4", 0),
        ("real/r1.mp4", 0),
        ("real/r2.mp4", 0),
        ("fake/batch2/f2.webm", 1),
        ("fake/f0.webm", 1),
        ("fake/f1.webm", 1),
    ]


def test_a_folder_without_real_or_fake_videos_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    with pytest.raises(DatasetError, match="DIR/real"):
        load_videos(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_videos(tmp_path / "missing")


def test_a_perfectly_separating_model_scores_auc_1_at_every_level(video_dir: Path) -> None:
    evaluation = evaluate_videos(
        BrightnessBackend(), load_videos(video_dir), checkpoint="stub", frames=4
    )
    assert list(evaluation.levels) == LEVELS
    for level in LEVELS:
        metrics = evaluation.levels[level]
        assert metrics["auc"] == 1.0 and metrics["ap"] == 1.0 and metrics["eer"] == 0.0
    assert evaluation.levels["frame"]["n"] == 6 * 4  # 6 readable clips, 4 frames each
    assert evaluation.levels["video_mean"]["n"] == 6
    assert evaluation.levels["video_mean"]["n_fake"] == 3
    assert [Path(r.path).name for r in evaluation.failed] == ["broken.mp4"]
    assert evaluation.failed[0].error is not None
    assert evaluation.failed[0].error.code == "invalid_video"


def test_an_inverted_model_scores_auc_0_and_the_log_loss_comes_from_the_scores(
    video_dir: Path,
) -> None:
    videos = load_videos(video_dir)
    inverted = evaluate_videos(BrightnessBackend(invert=True), videos, checkpoint="stub", frames=3)
    assert all(inverted.levels[level]["auc"] == 0.0 for level in LEVELS)
    coin = evaluate_videos(BrightnessBackend(constant=0.5), videos, checkpoint="stub", frames=3)
    for level in LEVELS:
        assert coin.levels[level]["log_loss"] == pytest.approx(math.log(2.0))
        assert coin.levels[level]["auc"] == 0.5
    # the frame-level log loss is the mean over frames of -log p(true class)
    scored = [p for v in inverted.videos for p in v.frame_probs]
    labels = [v.video.label for v in inverted.videos for _ in v.frame_probs]
    expected = -np.mean([math.log(p if y else 1 - p) for p, y in zip(scored, labels, strict=True)])
    assert inverted.levels["frame"]["log_loss"] == pytest.approx(expected, rel=1e-6)


def test_the_table_has_a_row_per_metric_and_a_column_per_level(video_dir: Path) -> None:
    evaluation = evaluate_videos(
        BrightnessBackend(), load_videos(video_dir), checkpoint="stub.pt", frames=2
    )
    lines = format_video_table(evaluation).splitlines()
    assert lines[1].split() == ["metric", *LEVELS]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2 : 2 + len(LEVEL_METRICS)]}
    assert list(rows) == list(LEVEL_METRICS)
    assert rows["auc"] == ["1"] * 4 and rows["eer"] == ["0.0000"] * 4
    assert rows["n"] == ["12", "6", "6", "6"]
    assert lines[-1].startswith("not scored: ") and "broken.mp4" in lines[-1]


def test_the_cli_scores_a_real_checkpoint_on_videos_and_writes_json(
    video_dir: Path, checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    code = evaluate_cli.main(
        [
            "--checkpoint",
            str(checkpoint_path),
            "--videos",
            str(video_dir),
            "--frames",
            "3",
            "--json-out",
            str(out),
        ]
    )
    assert code == 0
    assert "7 videos (4 real, 3 fake)" in capsys.readouterr().err
    payload = json.loads(out.read_text())
    (result,) = payload["video_results"]
    assert payload["videos"] == str(video_dir) and "results" not in payload
    assert result["frames"] == 3 and list(result["levels"]) == LEVELS
    assert result["levels"]["frame"]["n"] == 18
    assert len(result["videos"]) == 6 and len(result["failed"]) == 1
    for video in result["videos"]:
        assert set(video["scores"]) == set(AGGREGATE_RULES) and video["frames_scored"] == 3


def test_the_cli_needs_data_or_videos(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        evaluate_cli.main(["--checkpoint", "x.pt"])
    assert exited.value.code == 2
    assert "--videos" in capsys.readouterr().err


# --- identities and intervals ---------------------------------------------------------------


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real/fake twins of 4 people (dark real, bright fake), with videos.csv naming whose each
    video is and whether it is camera footage or a synthetic shot."""
    root = tmp_path_factory.mktemp("twins")
    rows = ["path,label,identity,source,kind,frames,fps"]
    for k in range(4):
        kind = "camera" if k < 2 else "synthetic"
        for label, level in (("real", 30 + 10 * k), ("fake", 170 + 10 * k)):
            (root / label).mkdir(exist_ok=True)
            (root / label / f"p{k}.mp4").write_bytes(
                video_bytes("mp4", frames=8, fps=4, maker=_flat(level))
            )
            rows.append(f"{label}/p{k}.mp4,{label},person{k},pkg,{kind},8,4")
    (root / "videos.csv").write_text("\n".join(rows) + "\n")
    return root


def test_videos_csv_names_each_videos_identity_and_kind(twin_dir: Path, video_dir: Path) -> None:
    videos = load_videos(twin_dir)
    assert {
        (v.path.name, v.label, v.identity, v.source) for v in videos if v.path.name == "p0.mp4"
    } == {
        ("p0.mp4", 0, "person0", "camera"),
        ("p0.mp4", 1, "person0", "camera"),
    }
    # without videos.csv a video's stem is its identity (a real video and its twin share it)
    plain = load_videos(video_dir)
    assert {v.group for v in plain} == {"broken", "r0", "r1", "r2", "f0", "f1", "f2"}
    assert all(v.source == "" for v in plain)


def test_interval_reports_resample_people_per_level_and_kind(twin_dir: Path) -> None:
    evaluation = evaluate_videos(
        BrightnessBackend(),
        load_videos(twin_dir),
        checkpoint="stub",
        frames=3,
        intervals=BootstrapOptions(resamples=40, seed=0),
    )
    by = {(r.source, r.level): r for r in evaluation.reports}
    assert set(by) == {(s, level) for s in ("all", "camera", "synthetic") for level in LEVELS}
    frame = by[("all", "frame")]
    assert frame.identities == 4 and frame.n == 8 * 3 and frame.n_fake == 12
    video = by[("all", "video_mean")]
    assert video.identities == 4 and video.n == 8 and video.resamples == 40
    # a perfect model: every resample separates, the interval is [1, 1]
    assert (video.metrics["auc"].low, video.metrics["auc"].high) == (1.0, 1.0)
    assert by[("camera", "frame")].identities == 2
    table = evaluate_cli.format_interval_table([], [evaluation])
    lines = [line.split()[:3] for line in table.splitlines()[2:]]
    assert ["videos", "camera", "video_mean"] in lines and len(lines) == len(evaluation.reports)
    payload = evaluate_cli.video_evaluation_json(evaluation)
    assert len(payload["intervals"]) == len(evaluation.reports)
    assert {v["identity"] for v in payload["videos"]} == {f"person{k}" for k in range(4)}


def test_without_intervals_no_reports_are_made(twin_dir: Path) -> None:
    evaluation = evaluate_videos(
        BrightnessBackend(), load_videos(twin_dir), checkpoint="stub", frames=2
    )
    assert evaluation.reports == ()
