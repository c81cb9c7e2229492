"""The parts of a run that need no training: the CLI derived from TrainConfig, the checkpoint
saver's best/last/top-N policy, and the metrics CSV."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from src.models.checkpoint import ModelMetadata, read_checkpoint
from src.train import evaluate as evaluate_cli
from src.train.__main__ import build_parser, config_from_args
from src.train.__main__ import main as train_main
from src.train.checkpoint import TrainingState, finite_metrics
from src.train.config import TrainConfig, option_name
from src.train.metrics_csv import MetricsCsv
from src.train.saver import CheckpointSaver

REQUIRED = ["--data-dir", "data", "--out-dir", "out"]

# --- the command line -----------------------------------------------------------------------


def _actions() -> dict[str, object]:
    return {
        option: action
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_parser_has_one_flag_per_field_with_the_dataclass_default() -> None:
    actions = _actions()
    fields = dataclasses.fields(TrainConfig)
    assert sorted(actions) == sorted(option_name(f) for f in fields)
    args = build_parser().parse_args(REQUIRED)
    for spec in fields:
        action = actions[option_name(spec)]
        assert getattr(action, "help", ""), spec.name
        assert getattr(action, "dest", None) == spec.name
        if spec.default is not dataclasses.MISSING:
            assert getattr(args, spec.name) == spec.default, spec.name
    assert config_from_args(args) == TrainConfig(data_dir=Path("data"), out_dir=Path("out"))


def test_help_shows_every_flag_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for spec in dataclasses.fields(TrainConfig):
        assert option_name(spec) in text
    for shown in ("(default 32)", "(default adamw)", "(default efficientnet_lite0)"):
        assert shown in text
    assert "(default 0)" in text.split("--keep-top KEEP_TOP", 1)[1]


def test_flags_types_and_choices_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            *REQUIRED,
            "--face-crop",
            "--no-progress",
            "--keep-top",
            "3",
            "--lr",
            "0.5",
            "--max-steps-per-epoch",
            "4",
            "--resume",
            "auto",
            "--best-metric",
            "val_loss",
            "--scheduler",
            "step",
        ]
    )
    config = config_from_args(args)
    assert (config.face_crop, config.progress, config.keep_top) == (True, False, 3)
    assert (config.lr, config.max_steps_per_epoch, config.resume) == (0.5, 4, "auto")
    assert config.best_metric == "loss" and config.scheduler == "step"
    assert isinstance(config.data_dir, Path)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*REQUIRED, "--optimizer", "adam"])


def test_field_choices_are_also_checked_by_the_dataclass() -> None:
    with pytest.raises(ValueError, match="optimizer must be adamw or sgd, got 'adam'"):
        TrainConfig(data_dir=Path("d"), out_dir=Path("o"), optimizer="adam")
    with pytest.raises(ValueError, match="amp must be auto, bf16, fp16 or off"):
        TrainConfig(data_dir=Path("d"), out_dir=Path("o"), amp="fp8")
    with pytest.raises(ValueError, match="keep_top"):
        TrainConfig(data_dir=Path("d"), out_dir=Path("o"), keep_top=-1)


def test_bad_devices_are_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert train_main(["--data-dir", str(tmp_path), "--out-dir", out, "--device", "cuda:99"]) == 2
    assert "cuda:99" in capsys.readouterr().err
    code = evaluate_cli.main(
        ["--checkpoint", "x.pt", "--data", str(tmp_path), "--device", "tpu", "--split", "all"]
    )
    assert code == 2
    assert "device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


# --- the checkpoint saver -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    return nn.Linear(3, 2)


def _state(epoch: int) -> TrainingState:
    return TrainingState(
        epoch=epoch, global_step=epoch, best_score=None, best_epoch=None, optimizer={}
    )


def _save(saver: CheckpointSaver, model: nn.Module, epoch: int, score: float) -> bool:
    """Save one epoch as ``fit`` does; ``is_better`` before must agree with ``save``."""
    metadata = ModelMetadata(
        architecture="linear", metrics=finite_metrics({saver.metric: score, "epoch": epoch})
    )
    expected = saver.is_better(score)
    assert saver.save(epoch, score, model, metadata, _state(epoch)) is expected
    return expected


def _run(saver: CheckpointSaver, model: nn.Module, scores: list[float]) -> list[bool]:
    return [_save(saver, model, epoch, score) for epoch, score in enumerate(scores, start=1)]


def _epoch_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("epoch-*.pt"))


@pytest.mark.parametrize(
    ("metric", "scores", "improved", "best_epoch"),
    [
        ("loss", [0.5, 0.7, 0.4, math.nan, 0.4], [True, False, True, False, False], 3),
        ("auc", [0.6, 0.9, math.nan, 0.8, 0.95], [True, True, False, False, True], 5),
    ],
)
def test_saver_keeps_the_best_by_a_decreasing_or_increasing_metric(
    tmp_path: Path,
    tiny_model: nn.Module,
    metric: str,
    scores: list[float],
    improved: list[bool],
    best_epoch: int,
) -> None:
    saver = CheckpointSaver(tmp_path, metric)
    assert saver.decreasing is (metric == "loss")
    assert saver.best_path is None
    assert _run(saver, tiny_model, scores) == improved
    assert (saver.best_epoch, saver.best_score) == (best_epoch, scores[best_epoch - 1])
    assert saver.best_path is not None
    best = read_checkpoint(saver.best_path)
    assert best.training is None and best.metadata.metrics["epoch"] == best_epoch
    last = read_checkpoint(saver.last_path).training
    assert last is not None and last["epoch"] == len(scores)
    assert (last["best_epoch"], last["best_score"]) == (best_epoch, scores[best_epoch - 1])
    assert not _epoch_files(tmp_path), "keep_top=0 writes no epoch files"


def test_decreasing_can_be_forced(tmp_path: Path) -> None:
    assert CheckpointSaver(tmp_path, "custom", decreasing=True).decreasing
    assert not CheckpointSaver(tmp_path, "loss", decreasing=False).decreasing


def test_keep_top_prunes_to_the_n_best_epochs(tmp_path: Path, tiny_model: nn.Module) -> None:
    saver = CheckpointSaver(tmp_path, "auc", keep_top=2)
    saver.restore(None)
    for epoch, score in enumerate([0.6, 0.9, math.nan, 0.7, 0.8], start=1):
        _save(saver, tiny_model, epoch, score)
        assert len(_epoch_files(tmp_path)) <= 2
    assert _epoch_files(tmp_path) == ["epoch-002.pt", "epoch-005.pt"]
    assert saver.top == [(0.9, 2), (0.8, 5)]

    (tmp_path / "epoch-009.pt").write_bytes(b"a later epoch a crash left behind")
    resumed = CheckpointSaver(tmp_path, "auc", keep_top=1)
    resumed.restore(_state(5))
    assert resumed.top == [(0.9, 2)]
    assert _epoch_files(tmp_path) == ["epoch-002.pt"]


def test_keep_top_with_a_loss_keeps_the_lowest(tmp_path: Path, tiny_model: nn.Module) -> None:
    saver = CheckpointSaver(tmp_path, "loss", keep_top=1)
    for epoch, score in enumerate([0.5, 0.3, 0.4], start=1):
        _save(saver, tiny_model, epoch, score)
    assert _epoch_files(tmp_path) == ["epoch-002.pt"]


def test_saver_names_an_unknown_metric(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--best-metric 'auk' is not one of"):
        CheckpointSaver(tmp_path, "auk").score({"auc": 0.5, "loss": 0.1})
    assert CheckpointSaver(tmp_path, "auc").score({"auc": 0.5}) == 0.5


def test_saver_writes_atomically(tmp_path: Path, tiny_model: nn.Module) -> None:
    _run(CheckpointSaver(tmp_path, "auc", keep_top=1), tiny_model, [0.5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch-001.pt", "last.pt"]
    assert torch.equal(
        read_checkpoint(tmp_path / "best.pt").state_dict["weight"], tiny_model.weight.detach()
    )


# --- the metrics CSV ------------------------------------------------------------------------


def _epochs(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_metrics_csv_truncates_rows_after_the_resume_epoch(tmp_path: Path) -> None:
    log = MetricsCsv(tmp_path / "metrics.csv")
    log.truncate_after(1)
    assert not log.path.exists()
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "val_auc": 0.5 + epoch / 10})
    log.truncate_after(1)
    assert _epochs(log.path) == [1]
    log.append({"epoch": 2, "val_auc": 0.9, "new_column": 1})
    with log.path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "val_auc"]
    assert [row["val_auc"] for row in rows] == ["0.6", "0.9"]
    log.reset()
    assert not log.path.exists()
    log.reset()
