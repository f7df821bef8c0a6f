"""GPT-NeoX (EleutherAI's Pythia): one fused query/key/value product, rotary positions on a
share of each head, parallel attention and MLP."""

from __future__ import annotations

from loraft.models.architecture import STANDARD_CONFIG_KEYS, Architecture

ARCHITECTURE = Architecture(
    model_type="gpt_neox",
    family="GPT-NeoX",
    attention=("attention.query_key_value",),
    attention_output=("attention.dense",),
    mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    default_targets=("query_key_value",),
    layer_names=(
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "embed_in",
        "embed_out",
        "score",
    ),
    config_keys={**STANDARD_CONFIG_KEYS, "kv_heads": None},
    dropout_keys=("attention_dropout", "hidden_dropout"),
    grouped_query=False,
)
