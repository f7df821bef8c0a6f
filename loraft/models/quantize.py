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


def merged_in_full_precision(model: torch.nn.Module) -> torch.nn.Module:
    """A LoRA model on a 4-bit base as one plain model: each NF4 weight dequantised, the LoRA
    update added in full precision (PEFT's own merge would quantise it into the 4-bit weight,
    lossy), the family's own layer types back (GPT-2's Conv1D stores its weights transposed).
    The function is the trained model's: the weights it trained on, plus its update."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from loraft.models.loading import architecture_of

    adapter = model.active_adapter
    updates = {
        name.removeprefix("base_model.model."): module.get_delta_weight(adapter).float()
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and adapter in getattr(module, "lora_A", {})
    }
    base = model.unload().dequantize()
    base.config.torch_dtype = "float32"
    transposed = architecture_of(base) is not None and architecture_of(base).transposed_weights
    output = base.get_output_embeddings()
    for name, layer in list(base.named_modules()):
        if not isinstance(layer, torch.nn.Linear) or layer is output:
            continue
        layer.weight.data = layer.weight.data.float() + updates.pop(name, 0)
        if transposed:  # back to Conv1D, as GPT-2 stores and reloads its weights
            replacement = Conv1D(layer.out_features, layer.in_features)
            replacement.weight.data = layer.weight.data.T.contiguous()
            replacement.bias.data = (
                layer.bias.data.float() if layer.bias is not None else replacement.bias.data * 0
            )
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent), child, replacement)
    if updates:
        raise LoraftError(f"export --merge: no dequantised layer for the update of {sorted(updates)[0]}")
    return base
