"""Which layers a LoRA-style method adapts: names, paths and aliases resolved on the model.

A target is a layer name (`c_attn`), a path suffix with a dot (`attn.c_proj`, where GPT-2's
attention and MLP outputs share the name `c_proj`), or an alias the family's `Architecture`
defines: `attention` (the query/key/value products), `attention_output`, `mlp`; and PEFT's
`all-linear` (every linear layer but the output layers), on any family. Matching is PEFT's
own: a module's whole path, or its end after a dot. Each target must match a layer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from loraft.errors import LoraftError
from loraft.models import FAMILIES, Architecture

if TYPE_CHECKING:
    import torch

ALIASES = ("attention", "attention_output", "mlp")
ALL_LINEAR = "all-linear"
CLASSIFIER = "score"  # transformers' classification head in every family: never "linear" here


def check_target_names(
    targets: list[str], architecture: Architecture | None, model_type: str | None, section: str = "lora"
) -> None:
    """Before any weights load: every target is an alias or one of the family's layers."""
    for target in targets:
        if target == ALL_LINEAR:
            continue
        if target in ALIASES and architecture is None:
            raise LoraftError(
                f"{section}.target_modules: '{target}' is an alias of the families loraft knows "
                f"({', '.join(FAMILIES)}); this model is '{model_type}': name its layers, or use all-linear"
            )
        last = target.split(".")[-1]
        if architecture is not None and target not in ALIASES and last not in architecture.layer_names:
            raise LoraftError(
                f"{section}.target_modules: '{target}' is not a {architecture.family} layer LoRA can adapt; "
                f"use some of {', '.join(architecture.layer_names)} or {', '.join([*ALIASES, ALL_LINEAR])}"
            )


def resolve_targets(
    model: torch.nn.Module, targets: list[str], architecture: Architecture | None
) -> dict[str, list[str]]:
    """Each target as given -> the paths of the layers it adapts in `model`, in model order."""
    layers = adaptable_layers(model)
    resolved = {}
    for target in targets:
        if target == ALL_LINEAR:
            matched = [name for name in linear_layers(model)]
        else:
            patterns = architecture.target_alias(target) if target in ALIASES and architecture else (target,)
            matched = [name for name in layers if any(_matches(name, p) for p in patterns)]
        if not matched:
            raise LoraftError(_no_match(model, target, targets))
        resolved[target] = matched
    return resolved


def peft_targets(resolved: dict[str, list[str]]) -> list[str]:
    """The module paths for PEFT's `target_modules`: exactly the resolved layers, once each."""
    return list(dict.fromkeys(name for names in resolved.values() for name in names))


def describe_targets(resolved: dict[str, list[str]]) -> str:
    """`attention -> h.*.attn.c_attn (2)`: each target's layers with block numbers folded."""
    parts = []
    for target, names in resolved.items():
        folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in names))
        parts.append(f"{target} -> {', '.join(folded)} ({len(names)})")
    return "; ".join(parts)


def adaptable_layers(model: torch.nn.Module) -> list[str]:
    """Paths of the layers PEFT's LoRA can wrap: linear (and GPT-2's Conv1D) and embeddings."""
    import torch

    kinds = (*linear_types(), torch.nn.Embedding)
    return [name for name, module in model.named_modules() if name and isinstance(module, kinds)]


def linear_layers(model: torch.nn.Module) -> list[str]:
    """PEFT's `all-linear`: every linear layer except the output layers (LM head, classifier)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, linear_types()) and module is not output and name.split(".")[-1] != CLASSIFIER
    ]


def linear_types() -> tuple[type, ...]:
    """The module types of matrix products: `nn.Linear`, and transformers' `Conv1D` (GPT-2)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def layer_shape(layer: torch.nn.Module) -> tuple[int, int]:
    """(outputs, inputs) of a matrix product; a 4-bit layer's weight is stored packed."""
    if hasattr(layer, "in_features"):
        return layer.out_features, layer.in_features
    return tuple(layer.weight.shape)


def stores_transposed(model: torch.nn.Module, names: list[str]) -> bool:
    """Whether the layers keep their weights (in, out), as GPT-2's Conv1D: PEFT's fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    return bool(names) and all(isinstance(modules[name], Conv1D) for name in names)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _no_match(model: torch.nn.Module, target: str, targets: list[str]) -> str:
    known = sorted({name.split(".")[-1] for name, _ in model.named_modules() if name})
    if any(_matches(name, target) for name, _ in model.named_modules()):
        return f"lora.target_modules: '{target}' is not a layer LoRA can adapt (linear or embedding)"
    return (
        f"lora.target_modules: {targets} match no module of the model ('{target}' matches none); "
        f"module names include {', '.join(n for n in known if not n.isdigit())}"
    )
