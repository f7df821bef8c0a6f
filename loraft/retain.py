"""`eval.retain`: what fine-tuning forgot, as the loss on text like the base model's
pretraining data, measured before the first step and with the selected checkpoint.

"LoRA learns less and forgets less" (Biderman et al., 2024) is a claim about exactly this pair
of numbers against the task's own metric; here a user checks it on their own task. The file
holds one text a line (blank lines skipped), each cut at `data.max_length` tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from loraft.data import require_data_file
from loraft.errors import LoraftError
from loraft.recipe import Recipe


def read_retain_texts(recipe: Recipe, roots: list[Path]) -> list[str]:
    """The retain file's texts, or a one-line error naming it."""
    path = require_data_file("eval.retain", recipe.eval.retain, roots)
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise LoraftError(f"eval.retain: cannot read {path} as UTF-8 text ({type(error).__name__})") from None
    if not texts:
        raise LoraftError(f"eval.retain: {path} holds no text (expected a text a line)")
    return texts


def retain_features(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """Each text as a language-model example (every token a target), cut at `max_length`."""
    features = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) > 1:
            features.append({"input_ids": ids, "labels": ids})
    return features


def retain_loss(
    model: torch.nn.Module,
    features: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    accelerator: Accelerator,
) -> dict:
    """Token-weighted next-token loss of the retain texts (padded rows, the run's precision)."""
    from loraft.tasks.causal_lm import pad_right, per_example_token_loss

    model.eval()
    loss_sum = tokens = 0.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode(), accelerator.autocast():
        for start in range(0, len(features), batch_size):
            batch = pad_right(features[start : start + batch_size], pad)
            sums, counts = per_example_token_loss(
                model, {k: v.to(accelerator.device) for k, v in batch.items()}
            )
            loss_sum, tokens = loss_sum + float(sums.sum()), tokens + float(counts.sum())
    return {"loss": loss_sum / max(tokens, 1), "tokens": int(tokens)}


def retain_summary(file: str, before: dict, after: dict, texts: int) -> dict:
    """The summary's `retain` entry: both losses, their change and perplexities."""
    return {
        "file": file,
        "texts": texts,
        "tokens": after["tokens"],
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "loss_change": after["loss"] - before["loss"],
        "perplexity_before": math.exp(min(before["loss"], 50)),
        "perplexity_after": math.exp(min(after["loss"], 50)),
    }
