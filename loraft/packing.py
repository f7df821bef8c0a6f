"""Padding-free packing: a micro-batch's causal-LM examples as one row, each seeing only itself.

The examples are laid back to back in a single row with no padding. Every example keeps its
own positions (0, 1, ...) and attends only to its own earlier tokens: the row carries the
examples' boundaries (`cu_seq_lens`, as transformers names them for flash-attention's
variable-length kernels), and `packed_attention` runs causal attention on each example's slice
of the row. The label of each example's first token is ignored, as the shift of an unpacked
row drops it. So each example's token losses are those it has alone in a padded row (tested to
1e-5), and the layers outside attention compute no padding at all: on AG News batches of 8
articles, rows of 128 tokens were 84% real tokens.

Written here because the libraries do not cover this case on a CPU: trl's padding-free
collator relies on flash-attention's variable-length kernels (CUDA only), and transformers
turns packed position ids under SDPA into one (tokens x tokens) block mask, whose attention
and dropout grow with the square of the whole row instead of each example's length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from loraft.tasks.base import IGNORE_INDEX

PACKED_ATTENTION = "sdpa_packed"  # the attention implementation loraft gives the models it loads


def pack_examples(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A packed batch of one row: `input_ids`, `labels`, `position_ids`, `example_ids` (the
    example of each token), `attention_mask` (all ones), each (1, tokens), and `cu_seq_lens`
    (the examples' start offsets and the row's length, int32)."""
    ids = [list(feature["input_ids"]) for feature in features]
    labels = []
    for feature, own in zip(features, ids, strict=True):
        targets = list(feature.get("labels", own))
        targets[0] = IGNORE_INDEX  # nothing before it in its own text predicts it
        labels.append(targets)
    lengths = torch.tensor([len(own) for own in ids])
    row = {
        "input_ids": torch.tensor([token for own in ids for token in own]),
        "labels": torch.tensor([label for targets in labels for label in targets]),
        "position_ids": torch.cat([torch.arange(length) for length in lengths.tolist()]),
        "example_ids": torch.repeat_interleave(torch.arange(len(ids)), lengths),
    }
    batch = {key: value[None] for key, value in row.items()}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["cu_seq_lens"] = torch.cat([torch.zeros(1), lengths.cumsum(0)]).to(torch.int32)
    return batch


def packed_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's arguments for a packed batch. The mask of ones keeps transformers from
    building a block mask out of the position ids; `packed_attention` reads the boundaries,
    from the host: on a GPU, one wait here instead of one in every layer."""
    bounds = batch["cu_seq_lens"].cpu()
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
    }


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; for a packed row (`cu_seq_lens_q`), causal SDPA on each
    example's slice. Query, key and value are (batch, heads, tokens, head size); with
    grouped-query attention, key and value have fewer heads, each shared by a group of query
    heads. Rotary positions are already applied (from each example's own position ids)."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return _attention_per_example(query, key, value, cu_seq_lens_q, dropout, scaling), None


@torch.compiler.disable  # a loop over data-dependent slices: compiled graphs break around it
def _attention_per_example(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    # split, not one slice per example: the backward pass then joins the examples' gradients
    # once, where slices would each add a zero-filled gradient of the whole row
    lengths = bounds.diff().tolist()
    grouped = key.shape[1] != query.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=grouped
        )
        for q, k, v in zip(*(tensor.split(lengths, dim=2) for tensor in (query, key, value)), strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2)


def packing_problem(model: torch.nn.Module, max_length: int) -> str | None:
    """Why `model` cannot train on packed rows, or None. Only the families loraft tests pack:
    another may take positions from the attention mask (OPT) or attend in ways the per-example
    attention does not reproduce (soft-capping, sliding windows)."""
    from loraft.models.loading import architecture_of

    config = model.config
    if architecture_of(model) is None:
        return f"packing is tested on the families loraft knows, not on '{config.model_type}' models"
    attention = getattr(config, "_attn_implementation", None)
    if attention != PACKED_ATTENTION:
        return f"the model's '{attention}' attention cannot keep packed examples apart"
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window is not None and window < max_length:
        return f"the model attends through a sliding window of {window} tokens, shorter than data.max_length"
    return None


def use_packed_attention(model: torch.nn.Module) -> None:
    """Give `model` loraft's packed attention (SDPA for unpacked batches, as before); a model
    without transformers' attention interface keeps its own (and cannot train packed)."""
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(PACKED_ATTENTION)
