"""Device choice and the CPU count, shared by serving and training."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from src.core.device import resolve_device


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", ""])
def test_a_device_spec_outside_the_grammar_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_auto_and_cpu_resolve_to_a_concrete_device() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" AUTO ") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_available_cpus_respects_a_container_cpu_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import src.core.device as config

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(config, "CGROUP_CPU_MAX", cpu_max)
    assert config.available_cpus() == affinity  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert config.available_cpus() == affinity  # no quota
    cpu_max.write_text("50000 100000\n")  # half a core
    assert config.available_cpus() == 1
    cpu_max.write_text(f"{150000 * affinity} 100000\n")  # more quota than cores
    assert config.available_cpus() == affinity
    cpu_max.write_text("garbage\n")
    assert config.available_cpus() == affinity


def test_auto_is_the_cpu_without_a_driver_and_without_importing_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from src.core import device

    monkeypatch.setattr(device, "nvidia_driver_present", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now fails
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_torch_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.core import device

    monkeypatch.setattr(device, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name: None)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="PyTorch is not installed"):
        resolve_device("cuda")
