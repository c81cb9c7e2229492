"""``python -m src.train.evaluate``: bootstrap intervals over identities, overall and per
source, in the printed table and the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from src.train import evaluate as evaluate_cli
from src.train.bootstrap import BootstrapOptions
from src.train.dataset import load_split
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.images import image_bytes


@pytest.fixture(scope="module")
def manifest_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 identities from two sources, 2 real + 2 fake images each, in a manifest."""
    root = tmp_path_factory.mktemp("data")
    rows = ["path,split,label,identity,source"]
    for k in range(5):
        source = "pkg_a" if k < 3 else "pkg_b"
        for label in ("real", "fake"):
            (root / "test" / label).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                rel = f"test/{label}/id{k}_{i}.png"
                (root / rel).write_bytes(image_bytes("PNG", (40, 40), seed=10 * k + i))
                rows.append(f"{rel},test,{label},id{k},{source}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_cli_prints_and_writes_intervals_per_source(
    manifest_data: Path, checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(checkpoint_path), "--data", str(manifest_data)]
    argv += ["--split", "test", "--bootstrap", "60", "--json-out", str(out)]
    assert evaluate_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "95% bootstrap intervals over identities" in printed
    lines = [line.split()[:5] for line in printed.splitlines() if line.startswith("test ")]
    assert lines == [
        ["test", "all", "frame", "5", "20"],
        ["test", "all", "identity", "5", "10"],
        ["test", "pkg_a", "frame", "3", "12"],
        ["test", "pkg_a", "identity", "3", "6"],
        ["test", "pkg_b", "frame", "2", "8"],
        ["test", "pkg_b", "identity", "2", "4"],
    ]
    (result,) = json.loads(out.read_text())["results"]
    intervals = result["intervals"]
    assert [(r["source"], r["level"]) for r in intervals][:2] == [
        ("all", "frame"),
        ("all", "identity"),
    ]
    frame = intervals[0]
    assert frame["resamples"] == 60 and frame["identities"] == 5
    auc = frame["metrics"]["auc"]
    assert auc["value"] == pytest.approx(result["metrics"]["auc"])
    assert auc["low"] <= auc["value"] <= auc["high"]
    identity = intervals[1]["metrics"]["log_loss"]
    assert identity["value"] == pytest.approx(result["metrics"]["video_log_loss"])


def test_no_intervals_with_bootstrap_0_and_bad_values_are_usage_errors(
    manifest_data: Path, checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", str(checkpoint_path), "--data", str(manifest_data), "--split", "test"]
    assert evaluate_cli.main([*argv, "--bootstrap", "0"]) == 0
    assert "bootstrap intervals" not in capsys.readouterr().out
    for bad in (["--bootstrap", "-1"], ["--confidence", "1.5"]):
        with pytest.raises(SystemExit) as exited:
            evaluate_cli.main([*argv, *bad])
        assert exited.value.code == 2


def test_evaluate_checkpoint_reports_match_its_metrics(
    manifest_data: Path, checkpoint_path: Path
) -> None:
    samples = load_split(manifest_data, "test")
    evaluation = evaluate_cli.evaluate_checkpoint(
        checkpoint_path,
        samples,
        "test",
        torch.device("cpu"),
        intervals=BootstrapOptions(resamples=30, confidence=0.9, seed=4),
    )
    overall = {r.level: r for r in evaluation.reports if r.source == "all"}
    for key in ("auc", "ap", "eer", "log_loss"):
        assert overall["frame"].metrics[key].value == pytest.approx(evaluation.metrics[key])
        video = evaluation.metrics[f"video_{key}"]
        if not math.isnan(video):
            assert overall["identity"].metrics[key].value == pytest.approx(video)
    table = evaluate_cli.format_interval_table([evaluation], confidence=0.9)
    assert table.startswith("metrics with 90% bootstrap intervals")


def test_two_models_are_named_by_version_and_missing_splits_can_be_skipped(
    manifest_data: Path,
    checkpoint_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the same file name in two folders (model.pt): the table names each by its version
    older = make_checkpoint(tmp_path / "old" / "model.pt", seed=1, version="0.0.9-old")
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(checkpoint_path), "--checkpoint", str(older)]
    argv += ["--data", str(manifest_data), "--split", "test", "test_lowres", "--bootstrap", "20"]
    argv += ["--videos", str(tmp_path / "no_videos"), "--json-out", str(out)]
    # without --missing-ok a split the data lacks is an error
    assert evaluate_cli.main(argv) == 2
    assert "test_lowres" in capsys.readouterr().err
    assert evaluate_cli.main([*argv, "--missing-ok", "--no-json"]) == 0
    captured = capsys.readouterr()
    assert "split 'test_lowres' skipped" in captured.err and "videos skipped" in captured.err
    # the interval table's rows (the first table's header names the checkpoints by path)
    firsts = [line.split()[0] for line in captured.out.splitlines() if line.strip()]
    titles = [t for t in firsts if t.endswith("@test")]
    assert set(titles) == {"test-1@test", "0.0.9-old@test"}
    assert '"results"' not in captured.out  # --no-json: tables only
    results = json.loads(out.read_text())["results"]
    assert [r["version"] for r in results] == ["test-1", "0.0.9-old"]
    assert {r["split"] for r in results} == {"test"}


def test_nothing_left_to_evaluate_is_an_error(
    manifest_data: Path, checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", str(checkpoint_path), "--data", str(manifest_data)]
    assert evaluate_cli.main([*argv, "--split", "nope", "--missing-ok"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
