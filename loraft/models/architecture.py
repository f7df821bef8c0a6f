"""What a model family is to loraft (`Architecture`), and a model's shape in neutral terms."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# The neutral shape fields and the config keys most families use for them (Llama's names;
# GPT-2 declares its own).
STANDARD_CONFIG_KEYS = {
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "width": "hidden_size",
    "mlp_width": "intermediate_size",
    "context": "max_position_embeddings",
}


class ModelShape(NamedTuple):
    """A model's size in architecture-neutral terms (what `loraft plan` estimates from)."""

    layers: int
    heads: int
    kv_heads: int
    width: int
    mlp_width: int
    context: int | None
    vocab: int


@dataclass(frozen=True)
class Architecture:
    """One model family. Layer names are PEFT's: the last parts of module paths, or a path
    suffix with a dot (`mlp.c_proj`) where a last name alone would be ambiguous."""

    model_type: str  # transformers' `config.model_type`
    family: str  # its name for people
    attention: tuple[str, ...]  # the query/key/value products
    attention_output: tuple[str, ...]
    mlp: tuple[str, ...]
    default_targets: tuple[str, ...]  # PEFT's per-architecture LoRA defaults
    layer_names: tuple[str, ...]  # every layer LoRA can adapt (checked before any weights load)
    config_keys: Mapping[str, str | None] = field(default_factory=lambda: STANDARD_CONFIG_KEYS)
    dropout_keys: tuple[str, ...] = ("attention_dropout",)  # set from `model.config.dropout`
    scratch_head_dim: bool = False  # the config has a head_dim of its own (Gemma's default is 256)
    grouped_query: bool = True  # supports fewer key/value heads than query heads
    default_mlp_ratio: float = 4.0  # mlp_width of a scratch model when the recipe gives none
    implicit_mlp_width: bool = False  # an unset MLP width in the config means the default ratio
    transposed_weights: bool = False  # weights stored (in, out): PEFT's fan_in_fan_out (GPT-2)
    known_sizes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # hub ids known offline
    hub_namespace: str = ""  # the hub organisation of known_sizes (openai-community/gpt2)
    fast_kernels: Callable[[Any], None] | None = None  # swaps in faster equal kernels in place

    def target_alias(self, alias: str) -> tuple[str, ...]:
        """The layers an alias (`attention`, `attention_output`, `mlp`) means in this family."""
        return {"attention": self.attention, "attention_output": self.attention_output, "mlp": self.mlp}[
            alias
        ]

    def scratch_config(self, shape: Any, vocab_size: int, bos: int | None, eos: int | None) -> dict:
        """The config fields (`config.json`) of a model of `shape` built from scratch."""
        values = {
            "layers": shape.layers,
            "heads": shape.heads,
            "kv_heads": shape.kv_heads or shape.heads,
            "width": shape.width,
            "mlp_width": shape.mlp_width or int(self.default_mlp_ratio * shape.width),
            "context": shape.context,
        }
        fields = {key: values[name] for name, key in self.config_keys.items() if key is not None}
        if shape.mlp_width is None and self.implicit_mlp_width:
            fields.pop(self.config_keys["mlp_width"])  # as the family's own configs leave it
        fields.update({key: shape.dropout for key in self.dropout_keys})
        if self.scratch_head_dim:
            fields["head_dim"] = shape.width // shape.heads
        return {
            "model_type": self.model_type,
            **fields,
            "vocab_size": vocab_size,
            "bos_token_id": bos,
            "eos_token_id": eos,
        }


def shape_from_config(
    config: Mapping[str, Any], keys: Mapping[str, str | None] | None = None, mlp_ratio: float = 4.0
) -> ModelShape:
    """A config's shape; a family loraft does not know is read with the standard keys, then
    GPT-2's (`n_embd`, ...), which older configs use."""
    keys = keys or STANDARD_CONFIG_KEYS

    def read(name: str, *fallbacks: str) -> Any:
        for key in (keys.get(name), *fallbacks):
            if key and config.get(key) is not None:
                return config[key]
        return None

    width = read("width", "n_embd", "d_model") or 0
    heads = read("heads", "n_head", "num_heads") or 1
    return ModelShape(
        layers=read("layers", "n_layer", "num_layers") or 0,
        heads=heads,
        kv_heads=read("kv_heads") or heads,
        width=width,
        mlp_width=read("mlp_width", "n_inner", "ffn_dim") or int(mlp_ratio * width),
        context=read("context", "n_positions", "max_position_embeddings"),
        vocab=config.get("vocab_size") or 0,
    )
