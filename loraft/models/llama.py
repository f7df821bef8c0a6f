"""Llama (and the many models of its shape): separate q/k/v products, grouped-query attention,
rotary positions, a SwiGLU MLP, RMSNorm."""

from __future__ import annotations

from loraft.models.architecture import Architecture

LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens")

ARCHITECTURE = Architecture(
    model_type="llama",
    family="Llama",
    attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attention_output=("self_attn.o_proj",),
    mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    default_targets=("q_proj", "v_proj"),
    layer_names=(*LAYERS, "lm_head", "score"),
    default_mlp_ratio=8 / 3,  # SwiGLU: three matrices of 8/3 the width cost what two of 4x do
)
