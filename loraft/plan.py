"""`loraft plan`: parameter counts and a memory estimate, without downloading any weights.

The model is built on the meta device (shapes only), for every family. The sizes a family
knows offline (GPT-2's four) and `model.config` need nothing; other names need their config (a
local path, or the hub).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, PretrainedConfig

from loraft.errors import LoraftError
from loraft.methods import apply_method, method_of
from loraft.models import ModelShape, architecture_for, known_config, scratch_fields, shape_of
from loraft.models.loading import auto_class, config_from_fields, count_parameters
from loraft.recipe import Recipe
from loraft.system import resident_memory_mb, resolve_precision

MB = 2**20


def model_config(recipe: Recipe) -> PretrainedConfig:
    """The architecture of the recipe's model, read without weights."""
    shape = recipe.model.config
    if shape is not None:
        last = recipe.model.tokenizer_vocab_size - 1  # BOS and EOS inside the trained vocabulary
        return config_from_fields(scratch_fields(shape, recipe.model.tokenizer_vocab_size, last, last))
    known = known_config(recipe.model.name)
    if known is not None:
        return config_from_fields(known[1])
    try:
        return AutoConfig.from_pretrained(recipe.model.name, revision=recipe.model.revision)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise LoraftError(f"model.name: cannot read the config of '{recipe.model.name}': {reason}") from None


def plan_recipe(recipe: Recipe) -> dict:
    """Counts as PEFT reports them, and a memory estimate for training at the recipe's shape."""
    config = model_config(recipe)
    kind = recipe.task_kind
    if kind == "classification":
        config.num_labels = len(recipe.data.labels or ["0", "1"])
    with torch.device("meta"):
        base = auto_class(kind).from_config(config)
        described = method_of(recipe).describe(base, recipe)
        model = apply_method(base, recipe, kind)
    trainable, total = count_parameters(model)
    quantized = linear_params(base) if recipe.model.quantize else 0  # NF4: all but the output layer
    head = loss_head(model, kind)
    family = architecture_for(config.model_type)
    return {
        "model": recipe.model.name or "scratch",
        "architecture": family.family if family else config.model_type,
        "method": recipe.method,
        "method_details": described,
        "total_params": total,
        "trainable_params": trainable,
        "trainable_pct": 100 * trainable / total,
        "batch_size": recipe.train.batch_size,
        "max_length": recipe.data.max_length,
        "precision": resolve_precision(recipe.train.precision),
        "memory_mb": with_runtime(
            estimate_memory_mb(
                recipe, shape_of(config.to_dict()), trainable, total, quantized, head, linear_params(base)
            )
        ),
    }


def with_runtime(memory: dict) -> dict:
    """The estimate with the process's own memory first: on a CPU a run's peak (RSS) counts
    the Python runtime with torch and the libraries loaded, measured here, where they are."""
    runtime = round(resident_memory_mb(), 1)
    return {"runtime": runtime, **memory, "total": round(memory["total"] + runtime, 1)}


def linear_params(model: torch.nn.Module) -> int:
    """The weights of the matrix products below the output layer (what `model.quantize: 4bit`
    stores in NF4; transformers keeps the output layer in full precision)."""
    from loraft.models.targets import linear_types

    output = model.get_output_embeddings()
    return sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, linear_types()) and module is not output
    )


def loss_head(model: torch.nn.Module, kind: str) -> torch.Tensor | None:
    """The output weight where training computes the loss chunk by chunk (`loraft.lm_loss`),
    so that the whole logits never exist; None where they do."""
    from loraft.lm_loss import fused_head_weight

    return fused_head_weight(model) if kind != "classification" else None


def estimate_memory_mb(
    recipe: Recipe,
    shape: ModelShape,
    trainable: int,
    total: int,
    quantized: int = 0,
    head: torch.Tensor | None = None,
    linear: int = 0,
) -> dict:
    """Weights, gradients, AdamW state and activations, in MiB (an estimate, not a measurement).

    Weights stay fp32 under mixed precision (autocast keeps fp32 masters); the `quantized` ones
    take half a byte each, and a byte of scale for every 64 (NF4, double-quantised). Activations follow
    Korthikanti et al. (2022): per layer about seq*batch*hidden*(34 + 5*heads*seq/hidden)
    bytes at 16 bits, twice that in fp32; at 16 bits the `linear` weights' cast copies are kept
    for the backward pass too. The loss comes on top: where it is chunked (`head` is the output
    weight) one chunk of logits, the head's 16-bit copy and the gradient buffers; otherwise
    the whole logits and their gradient.
    """
    batch, seq = recipe.train.batch_size, row_positions(recipe, shape)
    hidden, heads, layers = shape.width, shape.heads, shape.layers
    half = resolve_precision(recipe.train.precision) != "fp32"
    scale = 1 if half else 2
    per_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden) * scale
    if recipe.train.gradient_checkpointing:
        layers_kept = seq * batch * hidden * 2 * scale * layers + per_layer
    else:
        layers_kept = per_layer * layers
    if method_of(recipe).trains_layers_below_head:
        layers_kept += linear * 2 * half
    else:  # nothing below the head needs its activations
        layers_kept = seq * batch * hidden * 2 * scale
    memory = {
        "weights": (total - quantized) * 4 + quantized * (0.5 + 1 / 64),
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "activations": layers_kept + loss_bytes(recipe, shape, head, half),
    }
    memory["total"] = sum(memory.values())
    return {key: round(value / MB, 1) for key, value in memory.items()}


def row_positions(recipe: Recipe, shape: ModelShape) -> int:
    """The positions of a batch row: `data.max_length` (or the model's context, if shorter) and
    the method's own (prompt tuning's virtual tokens)."""
    length = min(recipe.data.max_length, shape.context or recipe.data.max_length)
    return length + method_of(recipe).extra_positions(recipe)


def loss_bytes(recipe: Recipe, shape: ModelShape, head: torch.Tensor | None, half: bool) -> float:
    """The loss's own peak: the logits, or (chunked) one chunk of them and its gradient buffers."""
    from loraft.lm_loss import ROWS

    positions = recipe.train.batch_size * row_positions(recipe, shape)
    if head is None:
        classes = len(recipe.data.labels or ["0", "1"])
        return positions * (classes if recipe.task_kind == "classification" else shape.vocab) * 4 * 2
    size = head.numel()
    chunk = min(positions, ROWS) * head.shape[0] * 4
    return chunk + positions * shape.width * 4 + size * 2 * half + size * 4 * head.requires_grad


def format_plan(plan: dict) -> str:
    """The human-readable form of `plan_recipe`'s result."""
    memory = plan["memory_mb"]
    lines = [
        f"model {plan['model']} ({plan['architecture']}), method {plan['method']}, batch "
        f"{plan['batch_size']} x {plan['max_length']} tokens, {plan['precision']}",
        *plan["method_details"],
        f"trainable params: {plan['trainable_params']:,d} || all params: {plan['total_params']:,d} "
        f"|| trainable%: {plan['trainable_pct']:.4f}",
        "estimated training memory (MiB; runtime: this process now, torch and the libraries loaded):",
    ]
    lines += [f"  {key:<12}{value:>12,.1f}" for key, value in memory.items()]
    return "\n".join(lines)
