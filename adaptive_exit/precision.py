"""Numeric precision and device: which precision a device runs natively, autocast, loss scaling for fp16."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable

import torch

from .errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    """The device commands run on: the first CUDA GPU where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPUINFO = "/proc/cpuinfo"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The CPU flags that decide how fast the layers run, named in benchmark reports.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo(cpuinfo: str | Path) -> dict[str, str]:
    """The fields of the first processor in a /proc/cpuinfo-style file (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_description(cpuinfo: str | Path = CPUINFO) -> dict[str, object]:
    """The CPU's model name, its flags among ``SPEED_FLAGS`` and whether it has native bf16, for reports."""
    fields = _cpuinfo(cpuinfo)
    flags = fields.get("flags", "").split()
    return {"model": fields.get("model name", "unknown"), "flags": [flag for flag in SPEED_FLAGS if flag in flags],
            "native_bf16": any(flag in flags for flag in NATIVE_BF16_FLAGS)}


def cpu_has_native_bf16(cpuinfo: str | Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); False where that cannot be read."""
    return bool(cpu_description(cpuinfo)["native_bf16"])


def cpu_line(cpu: dict[str, object]) -> str:
    """``cpu_description`` as one line of a report."""
    flags = ", ".join(cpu["flags"]) or f"none of {', '.join(SPEED_FLAGS)}"
    return f"CPU: {cpu['model']} ({flags}; bf16 {'native' if cpu['native_bf16'] else 'emulated'})"


def native_bf16(device: torch.device | str, cpuinfo: str | Path = CPUINFO) -> bool:
    """Whether ``device`` computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16(cpuinfo)


def emulated_bf16_note(device: torch.device | str, cpuinfo: str | Path = CPUINFO,
                       then: str = "bf16 runs emulated here, far slower than fp32; its timings say nothing of a CPU "
                                   "that has it") -> str | None:
    """A one-line note, ending with ``then``, where ``device`` has no native bf16 (None where it has)."""
    if native_bf16(device, cpuinfo):
        return None
    device = torch.device(device)
    missing = "bf16 support" if device.type == "cuda" else "AVX-512 BF16 or AMX"
    return (f"adaptive-exit: note: this {'GPU' if device.type == 'cuda' else 'CPU'} has no native bf16 "
            f"(no {missing}): {then}")


def resolve_precision(name: str, device: torch.device | str) -> str:
    """The precision to run in: ``auto`` becomes bf16 where ``device`` runs it natively, else fp32."""
    device = torch.device(device)
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 (or auto)")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UsageError("this GPU does not support bf16; use --precision fp16 (or auto)")
    return name


class Precision:
    """A resolved precision on a device: autocast for forward passes, and the backward and optimizer step.

    Parameters and optimizer state stay fp32; only operations inside ``autocast()`` run in the lower
    precision. fp16 scales the loss (``torch.amp.GradScaler``) so small gradients do not underflow.
    """

    def __init__(self, name: str = "auto", device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.name = resolve_precision(name, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Run the enclosed operations in this precision (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=DTYPES[self.name], enabled=self.name != "fp32")

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
             max_grad_norm: float) -> torch.Tensor:
        """Backward pass, gradient clipping and optimizer step; returns the gradients' total norm (unscaled).

        Gradients that are not finite are never applied: fp16's scaler skips the step and lowers its scale (a
        normal event), fp32 and bf16 skip it too and leave stopping to the caller.
        """
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
        if self.scaler.is_enabled() or torch.isfinite(norm):
            self.scaler.step(optimizer)
        self.scaler.update()
        return norm


def as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 (itself if it is already: no call into torch, which costs where every op counts)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


class full_precision:
    """Turn autocast off inside an autocast region (exit signals are scored in fp32: they meet thresholds); outside
    one (fp32, or already inside full_precision) nothing to do, so nothing is done. A class with two calls into
    torch rather than ``torch.autocast(enabled=False)``: early exit switches once per layer, and that context
    manager's Python work cost more than the exit head it surrounds."""

    def __init__(self, device: torch.device | str):
        self.device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
        self.switched = False

    def __enter__(self) -> None:
        self.switched = torch.is_autocast_enabled(self.device_type)
        if self.switched:
            torch.set_autocast_enabled(self.device_type, False)

    def __exit__(self, *exc: object) -> None:
        if self.switched:
            torch.set_autocast_enabled(self.device_type, True)
