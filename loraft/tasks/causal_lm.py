"""Causal language modelling: next-token loss on the target part of each text, perplexity."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from loraft.tasks.base import Batch, Task

IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding)


class CausalLMTask(Task):
    """Rows become `prompt + target + <eos>`; only target tokens (and the eos) carry loss."""

    kind: ClassVar[str] = "causal_lm"
    default_metric: ClassVar[str] = "eval_loss"
    metric_names: ClassVar[tuple[str, ...]] = ("eval_loss", "eval_perplexity")

    def prompt_and_target(self, row: dict[str, Any]) -> tuple[str, str]:
        """Split a row into a context without loss and a target with loss."""
        return "", row["text"]

    def tokenize(self, rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        max_length = self.recipe.data.max_length

        def encode(row: dict[str, Any]) -> dict[str, list[int]]:
            prompt, target = self.prompt_and_target(row)
            prompt_ids = tokenizer(prompt)["input_ids"] if prompt else []
            target_ids = tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]
            input_ids = (prompt_ids + target_ids)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
            return {"input_ids": input_ids, "labels": labels}

        return rows.map(encode, remove_columns=rows.column_names, keep_in_memory=True)

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        return pad_right(features, tokenizer.pad_token_id)

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator) -> dict:
        """Token-weighted mean loss over the eval split (not a mean of batch means).

        Per-example sums go through `gather_for_metrics`, which drops the duplicates a
        distributed sampler adds to even out the last batch; only two numbers per example
        are kept, never logits.
        """
        loss_sum, tokens = 0.0, 0.0
        max_batches = self.recipe.eval.max_batches
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            sums, counts = accelerator.gather_for_metrics(per_example_token_loss(model, batch))
            loss_sum, tokens = loss_sum + sums.sum().item(), tokens + counts.sum().item()
        mean = loss_sum / max(tokens, 1)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50)), "eval_tokens": int(tokens)}


def per_example_token_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses, number of predicted tokens) for each example of a batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.sum(dim=1).double(), (targets != IGNORE_INDEX).sum(dim=1).double()


def pad_right(features: list[dict[str, Any]], pad_token_id: int) -> Batch:
    """Right-pad input ids (pad id) and labels (ignored), with the attention mask."""
    longest = max(len(feature["input_ids"]) for feature in features)
    input_ids, labels, mask = [], [], []
    for feature in features:
        padding = longest - len(feature["input_ids"])
        input_ids.append(feature["input_ids"] + [pad_token_id] * padding)
        labels.append(feature.get("labels", feature["input_ids"]) + [IGNORE_INDEX] * padding)
        mask.append([1] * len(feature["input_ids"]) + [0] * padding)
    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }
