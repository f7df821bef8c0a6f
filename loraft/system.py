"""Facts about where a run ran: device, precision, processes, library versions, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import resource
import sys
from pathlib import Path

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


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc keep the memory a CPU run frees, for its next step to reuse.

    By default glibc maps every block above 32 MB afresh and unmaps it when freed, so each
    step's gradients, activations and logits chunks are new pages, each zeroed by the kernel on
    first touch: 0.1 s for GPT-2's 154 MB embedding gradient on a 2-core machine. The same
    effect as jemalloc or tcmalloc (PyTorch's CPU tuning guide), without preloading them.
    Measured (GPT-2 small, AVX512 CPU): causal LM, whose packed rows keep nearly one shape,
    10-15% more tokens/s for 1% more peak RSS; CFIMDB classification, whose length-grouped
    batches change width every step and so fragment a kept heap, 11% more tokens/s but 9% more
    peak RSS (9.9 -> 10.8 GB): loraft keeps freed memory for causal-LM runs only.
    False where the C library is not glibc (nothing changes there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: max allocated on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kilobytes / 1024 if sys.platform != "darwin" else kilobytes / 2**20


def machine_facts() -> dict:
    """The CPU a speed was measured on (its model, vector capability, cores) and how busy the
    machine was: figures from different CPUs, or a loaded one, do not compare."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # 1-, 5- and 15-minute load averages: how busy the machine was over the last while
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def resident_memory_mb() -> float:
    """This process's resident memory now (a CPU process; its peak is `peak_memory_mb`)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak_memory_mb(torch.device("cpu"))


def environment_facts(accelerator: Accelerator, precision: str) -> dict:
    """What a comparison needs to know to put two runs side by side honestly."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "precision": precision,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "machine": machine_facts(),  # at the end of training: its load averages cover the run's last minutes
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
    }
