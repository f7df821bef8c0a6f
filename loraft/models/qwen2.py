"""Qwen2: Llama's layout with biases on the query, key and value products."""

from __future__ import annotations

from loraft.models.architecture import Architecture
from loraft.models.llama import ARCHITECTURE as LLAMA

ARCHITECTURE = Architecture(
    model_type="qwen2",
    family="Qwen2",
    attention=LLAMA.attention,
    attention_output=LLAMA.attention_output,
    mlp=LLAMA.mlp,
    default_targets=("q_proj", "v_proj"),
    layer_names=LLAMA.layer_names,
    default_mlp_ratio=LLAMA.default_mlp_ratio,
)
