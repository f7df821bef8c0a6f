"""Gemma: Llama's layout with a GeGLU MLP, embeddings scaled by the square root of the width
and tied to the output layer, and a head size of its own (256 unless set)."""

from __future__ import annotations

from loraft.models.architecture import Architecture
from loraft.models.llama import ARCHITECTURE as LLAMA

ARCHITECTURE = Architecture(
    model_type="gemma",
    family="Gemma",
    attention=LLAMA.attention,
    attention_output=LLAMA.attention_output,
    mlp=LLAMA.mlp,
    default_targets=("q_proj", "v_proj"),
    layer_names=LLAMA.layer_names,
    scratch_head_dim=True,
    default_mlp_ratio=LLAMA.default_mlp_ratio,
)
