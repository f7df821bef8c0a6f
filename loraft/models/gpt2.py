"""GPT-2 (and its from-scratch minis): the first-class default family.

Its linear layers are transformers' `Conv1D`, which stores weights (in, out): PEFT needs
`fan_in_fan_out`. Attention input and output and the MLP output are all named `c_proj` or
`c_attn`, so the aliases name `attn.c_proj` and `mlp.c_proj` by path.
"""

from __future__ import annotations

from loraft.models.architecture import Architecture


def replace_gelu_new(model) -> None:
    """GPT-2's `gelu_new` is seven elementwise operations; PyTorch's tanh-approximated GELU is
    the same function as one kernel: 3x faster forward and backward, equal to fp32 rounding
    (2.4e-7). Replaced in place; the config still says gelu_new, so checkpoints load anywhere."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())


ARCHITECTURE = Architecture(
    model_type="gpt2",
    family="GPT-2",
    attention=("attn.c_attn",),
    attention_output=("attn.c_proj",),
    mlp=("mlp.c_fc", "mlp.c_proj"),
    default_targets=("c_attn",),
    layer_names=("c_attn", "c_proj", "c_fc", "wte", "wpe", "lm_head", "score"),
    config_keys={
        "layers": "n_layer",
        "heads": "n_head",
        "kv_heads": None,
        "width": "n_embd",
        "mlp_width": "n_inner",
        "context": "n_positions",
    },
    dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    grouped_query=False,
    implicit_mlp_width=True,
    transposed_weights=True,
    # The released checkpoints, so that plans and checks need no download; all 1,024 positions.
    known_sizes={
        name: {"n_layer": layers, "n_embd": width, "n_head": heads, "n_positions": 1024, "vocab_size": 50257}
        for name, layers, width, heads in (
            ("gpt2", 12, 768, 12),
            ("gpt2-medium", 24, 1024, 16),
            ("gpt2-large", 36, 1280, 20),
            ("gpt2-xl", 48, 1600, 25),
        )
    },
    hub_namespace="openai-community/",
    fast_kernels=replace_gelu_new,
)
