"""`model.quantize: 4bit`: the base's linear layers loaded in NF4 through bitsandbytes, LoRA
trained on top (QLoRA, Dettmers et al. 2023). An optional extra (`pip install 'loraft[qlora]'`):
where bitsandbytes is missing or cannot run, the recipe is refused in one line.

bitsandbytes 0.50 runs NF4 on a CPU too (dequantise, then matmul), and on a GPU. On a CPU with
avx512_bf16 it repacks a layer's weights the first time the layer runs in eval mode, for a
faster inference kernel; a training step after that (loraft evaluates during training) goes
through the inference kernel, whose bias add breaks autograd (measured on 0.50.2: "a view of a
leaf Variable that requires grad is being used in an in-place operation"), and that kernel's
numbers are not the training kernel's (logits 2e-3 apart on a tiny Llama). loraft turns the
repacking off (`keep_training_kernels`), so evaluation computes what training does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraft.errors import LoraftError

if TYPE_CHECKING:
    import torch

    from loraft.recipe import Recipe

MINIMUM = (0, 50)  # the first bitsandbytes whose 4-bit layers run on a CPU (measured: 0.50.2)
COMPUTE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def check_quantization(recipe: Recipe) -> None:
    """One line if the recipe asks for a 4-bit base that cannot be had here."""
    if recipe.model.quantize is None:
        return
    try:
        import bitsandbytes
    except ImportError:
        raise LoraftError(
            "model.quantize: 4bit needs bitsandbytes, which is not installed: pip install 'loraft[qlora]'"
        ) from None
    version = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2] if part.isdigit())
    if version < MINIMUM:
        raise LoraftError(
            f"model.quantize: bitsandbytes {bitsandbytes.__version__} is installed; 4-bit layers need "
            f"{'.'.join(map(str, MINIMUM))} or newer: pip install 'loraft[qlora]'"
        )


def quantization_options(recipe: Recipe) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base in NF4 (double-quantised, as QLoRA) onto
    this process's device, computing in the run's precision."""
    if recipe.model.quantize is None:
        return {}
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    from loraft.system import resolve_precision

    dtype = getattr(torch, COMPUTE_DTYPES[resolve_precision(recipe.train.precision)])
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    return {"quantization_config": config, "device_map": {"": str(PartialState().device)}}


def keep_training_kernels(model: torch.nn.Module) -> None:
    """No inference repacking of 4-bit weights on a CPU (see the module doc)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
