"""Device and numeric precision: pick them once, detect bf16 support, and give an autocast context."""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) off Linux."""
    if platform.system() != "Linux":
        return platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return model, flags


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast pays off."""
    return bool(set(BF16_FLAGS) & _cpuinfo()[1])


def machine_description(precision: str) -> str:
    """The CPU model, its bf16/AMX flags, torch's thread count and the run's precision, for benchmark figures."""
    model, flags = _cpuinfo()
    present = [flag for flag in (*BF16_FLAGS, "amx_tile", "avx512f", "avx2") if flag in flags]
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"CPU {model or 'unknown'} (flags: {' '.join(present) or 'none of avx2/avx512/bf16'}), "
        f"{torch.get_num_threads()} threads{gpu}, precision {precision}"
    )


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available else cpu; a cuda request without a GPU is an error naming --device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 on CPUs with native bf16 and on CUDA GPUs that support it, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@dataclass(frozen=True)
class Precision:
    """How forward passes run: on which device, and in an autocast context or not."""

    device: torch.device
    name: str

    @property
    def dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.name == "bf16" else None

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to bf16 for the forward pass, or a no-op context in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


GPU_CACHE_FRACTION = 0.25
"""Largest share of a GPU's free memory the decoded uint8 images may take to be kept on it."""


def images_on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The decoded uint8 images, moved once to a CUDA device when they take at most `GPU_CACHE_FRACTION` of
    its free memory (batches are then gathered and augmented on the GPU, no host copy per step); else as is."""
    if device.type != "cuda" or not isinstance(images, torch.Tensor):  # streamed images stay streamed
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() > GPU_CACHE_FRACTION * free:
        return images
    return images.to(device)
