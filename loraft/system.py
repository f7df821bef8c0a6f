"""Facts about where a run ran: device, precision, processes, library versions, peak memory."""

from __future__ import annotations

import resource
import sys

import accelerate
import peft
import torch
import transformers
from accelerate import Accelerator


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
