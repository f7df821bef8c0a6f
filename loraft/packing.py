"""Packing: several causal-LM examples share a row, each seeing only itself.

A batch's examples are placed first-fit-decreasing into rows of `row_length` tokens. Every
example keeps its own positions (0, 1, ...) and attends only to its own earlier tokens, through
a block-diagonal causal mask; the label of its first token is ignored, as the shift of an
unpacked row drops it. So each example's token losses are those it has alone in a padded row
(tested to 1e-5), with far less padding to compute.

Written here because the libraries do not cover this case: trl packs whole datasets and its
padding-free collator relies on flash-attention's variable-length kernels, which GPT-2 under
SDPA (and every CPU) does not have; a 4-D mask is what SDPA and eager attention both accept.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


def pack_examples(
    features: list[dict[str, Any]], row_length: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """A packed batch: `input_ids`, `labels`, `position_ids`, `example_ids` (the example of
    each token, -1 for padding) and `attention_mask` (1 for real tokens), each (rows, length)."""
    rows: list[list[int]] = []  # example indices per row
    room: list[int] = []
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    for index in order:
        size = len(features[index]["input_ids"])
        row = next((r for r, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([])
            room.append(row_length)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= size
    width = max(row_length - free for free in room)
    shape = (len(rows), width)
    batch = {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "example_ids": torch.full(shape, -1, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
    }
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            ids = features[index]["input_ids"]
            labels = list(features[index].get("labels", ids))
            labels[0] = IGNORE_INDEX  # nothing before it in its own text predicts it
            end = start + len(ids)
            batch["input_ids"][row, start:end] = torch.tensor(ids)
            batch["labels"][row, start:end] = torch.tensor(labels)
            batch["position_ids"][row, start:end] = torch.arange(len(ids))
            batch["example_ids"][row, start:end] = index
            batch["attention_mask"][row, start:end] = 1
            start = end
    return batch


def block_causal_mask(example_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (rows, 1, length, length): a token sees earlier tokens of its own example.

    A padding position sees itself only, so that no row of the softmax is empty (NaN).
    """
    length = example_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=example_ids.device).tril()
    same = example_ids[:, :, None] == example_ids[:, None, :]
    visible = (same & causal) | torch.eye(length, dtype=torch.bool, device=example_ids.device)
    blocked = torch.zeros(visible.shape, dtype=dtype, device=example_ids.device)
    return blocked.masked_fill(~visible, torch.finfo(dtype).min)[:, None]
