"""Facts about where a run ran: device, precision, processes, library versions, peak memory."""

from __future__ import annotations

import resource
import sys

import accelerate
import peft
import torch
import transformers
from accelerate import Accelerator


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 where bf16 matmul is native (so it is faster), fp32 elsewhere.

    On a CPU with AVX2 only, bf16 is emulated and about 100x slower than fp32.
    """
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 matmul in hardware."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: max allocated on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kilobytes / 1024 if sys.platform != "darwin" else kilobytes / 2**20


def environment_facts(accelerator: Accelerator, precision: str) -> dict:
    """What a comparison needs to know to put two runs side by side honestly."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "precision": precision,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
    }
