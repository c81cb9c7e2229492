"""Where a model runs: the device choice and the CPU count, defined once for serving and training.

Torch is imported only when a device is resolved, so code that never needs it stays torch-free.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Present wherever the NVIDIA kernel driver is loaded (on the host, and in a container given a GPU).
NVIDIA_DRIVER_FILES = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded: without one CUDA cannot be available, and ``auto``
    is the CPU without importing torch."""
    return any(path.exists() for path in NVIDIA_DRIVER_FILES)


def resolve_device(spec: str) -> str:
    """Turn ``auto|cpu|cuda|cuda:N`` into a concrete device, refusing CUDA where there is none.

    Raises ``ValueError`` with a message a person can act on.
    """
    spec = spec.strip().lower()
    if not DEVICE_PATTERN.match(spec):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if spec == "cpu" or (spec == "auto" and not nvidia_driver_present()):
        return "cpu"  # known without importing torch (which a torch-free image does not have)
    if importlib.util.find_spec("torch") is None:
        if spec == "auto":
            return "cpu"
        raise ValueError(
            f"device {spec!r} requested but PyTorch is not installed (this is a CPU-only image: "
            "use the cuda image, or DFD_DEVICE=cpu)"
        )
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return spec


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's ``--cpus`` or a pod's CPU limit), which ``os.cpu_count()`` does not see."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)
