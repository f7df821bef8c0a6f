"""`loraft plan`: parameter counts and a memory estimate, without downloading any weights.

The model is built on the meta device (shapes only). The four GPT-2 sizes are known here, so
planning them works offline; other names need their config (a local path, or the hub).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from loraft.checks import GPT2_SHAPES
from loraft.errors import LoraftError
from loraft.model import apply_method, count_parameters
from loraft.recipe import Recipe
from loraft.system import resolve_precision

GPT2_VOCAB = 50257
MB = 2**20


def model_config(recipe: Recipe) -> GPT2Config:
    """The architecture of the recipe's model, read without weights."""
    shape = recipe.model.config
    if shape is not None:
        return GPT2Config(
            vocab_size=recipe.model.tokenizer_vocab_size,
            n_positions=shape.n_positions,
            n_embd=shape.n_embd,
            n_layer=shape.n_layer,
            n_head=shape.n_head,
            bos_token_id=recipe.model.tokenizer_vocab_size - 1,  # inside the trained vocabulary
            eos_token_id=recipe.model.tokenizer_vocab_size - 1,
        )
    name = recipe.model.name.removeprefix("openai-community/")
    if name in GPT2_SHAPES:
        n_layer, n_embd, n_head = GPT2_SHAPES[name]
        return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=GPT2_VOCAB)
    try:
        return AutoConfig.from_pretrained(recipe.model.name, revision=recipe.model.revision)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise LoraftError(f"model.name: cannot read the config of '{recipe.model.name}': {reason}") from None


def plan_recipe(recipe: Recipe) -> dict:
    """Counts as PEFT reports them, and a memory estimate for training at the recipe's shape."""
    config = model_config(recipe)
    kind = "classification" if recipe.task == "classification" else "causal_lm"
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    if kind == "classification":
        config.num_labels = len(recipe.data.labels or ["0", "1"])
    with torch.device("meta"):
        model = apply_method(auto.from_config(config), recipe, kind)
    trainable, total = count_parameters(model)
    return {
        "model": recipe.model.name or "scratch",
        "method": recipe.method,
        "total_params": total,
        "trainable_params": trainable,
        "trainable_pct": 100 * trainable / total,
        "batch_size": recipe.train.batch_size,
        "max_length": recipe.data.max_length,
        "precision": resolve_precision(recipe.train.precision),
        "memory_mb": estimate_memory_mb(recipe, config, trainable, total),
    }


def estimate_memory_mb(recipe: Recipe, config: GPT2Config, trainable: int, total: int) -> dict:
    """Weights, gradients, AdamW state and activations, in MiB (an estimate, not a measurement).

    Weights stay fp32 under mixed precision (autocast keeps fp32 masters). Activations follow
    Korthikanti et al. (2022): per layer about seq*batch*hidden*(34 + 5*heads*seq/hidden)
    bytes at 16 bits, twice that in fp32; the logits and their gradient come on top.
    """
    batch, seq = recipe.train.batch_size, min(recipe.data.max_length, config.n_positions)
    hidden, heads, layers = config.n_embd, config.n_head, config.n_layer
    scale = 2 if resolve_precision(recipe.train.precision) == "fp32" else 1
    per_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden) * scale
    if recipe.train.gradient_checkpointing:
        layers_kept = seq * batch * hidden * 2 * scale * layers + per_layer
    else:
        layers_kept = per_layer * layers
    if recipe.method == "head":  # nothing below the head needs its activations kept
        layers_kept = seq * batch * hidden * 2 * scale
    outputs = config.num_labels if recipe.task == "classification" else config.vocab_size
    logits = batch * seq * outputs * 4 * 2
    memory = {
        "weights": total * 4,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "activations": layers_kept + logits,
    }
    memory["total"] = sum(memory.values())
    return {key: round(value / MB, 1) for key, value in memory.items()}


def format_plan(plan: dict) -> str:
    """The human-readable form of `plan_recipe`'s result."""
    memory = plan["memory_mb"]
    lines = [
        f"model {plan['model']}, method {plan['method']}, batch {plan['batch_size']} x "
        f"{plan['max_length']} tokens, {plan['precision']}",
        f"trainable params: {plan['trainable_params']:,d} || all params: {plan['total_params']:,d} "
        f"|| trainable%: {plan['trainable_pct']:.4f}",
        "estimated training memory (MiB):",
    ]
    lines += [f"  {key:<12}{value:>12,.1f}" for key, value in memory.items()]
    return "\n".join(lines)
