"""Causal language modelling: next-token loss on the target part of each text, perplexity."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from loraft.data import datasets_library
from loraft.errors import LoraftError
from loraft.run_dir import GENERATIONS_FILE
from loraft.tasks.base import IGNORE_INDEX, Batch, Task, pad_inputs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class GenerationCase(NamedTuple):
    """One generative-evaluation item: what the model is given and what it should write."""

    prompt: str
    reference: str


class CausalLMTask(Task):
    """Rows become `prompt + target + <eos>`; only target tokens (and the eos) carry loss."""

    kind: ClassVar[str] = "causal_lm"
    default_metric: ClassVar[str] = "eval_loss"
    metric_names: ClassVar[tuple[str, ...]] = ("eval_loss", "eval_perplexity")

    default_generate_size: ClassVar[int] = 32  # held-out texts scored by generation

    def prompt_and_target(self, row: dict[str, Any]) -> tuple[str, str]:
        """Split a row into a context without loss and a target with loss."""
        return "", row["text"]

    def generation_cases(self) -> list[GenerationCase]:
        """Held-out texts cut in two: the first part is the prompt, the rest the reference."""
        _, evaluation = self.rows()
        cases = []
        for row in evaluation.select(range(min(self.generate_size, len(evaluation)))):
            prompt, target = self.prompt_and_target(row)
            words = target.split()
            head = max(1, len(words) // 3)  # a third of the target primes the continuation
            cases.append(GenerationCase(prompt + " ".join(words[:head]), " ".join(words[head:])))
        return cases

    @property
    def generate_size(self) -> int:
        return self.recipe.eval.generate_size or self.default_generate_size

    def hypothesis(self, case: GenerationCase, continuation: str) -> str:
        """The text scored against the reference (the continuation, by default)."""
        return continuation.strip()

    def final_evaluation(
        self, model: Callable[[], torch.nn.Module], tokenizer: PreTrainedTokenizerBase, output: Path
    ) -> dict:
        """Generate for held-out prompts and score against references (chrF, BLEU, distinct-n).

        Every prompt, continuation and reference is written to `generations.jsonl`.
        """
        from loraft.generation import generate

        if not self.recipe.eval.generate:
            return {}
        cases = self.generation_cases()
        prompts, settings = [c.prompt for c in cases], self.recipe.generation
        continuations = generate(model(), tokenizer, prompts, settings, self.encode_prompt)
        hypotheses = [self.hypothesis(c, text) for c, text in zip(cases, continuations, strict=True)]
        references = [case.reference for case in cases]
        with (output / GENERATIONS_FILE).open("w", encoding="utf-8") as stream:
            for case, continuation, hypothesis in zip(cases, continuations, hypotheses, strict=True):
                record = {"prompt": case.prompt, "continuation": continuation, "reference": case.reference}
                stream.write(json.dumps({**record, "hypothesis": hypothesis}) + "\n")  # what was scored
        return score_generations(hypotheses, references, self.recipe.eval.metrics)

    def __init__(self, recipe, roots, evaluation_only: bool = False) -> None:
        super().__init__(recipe, roots, evaluation_only)
        self.packing = recipe.data.packing  # turned off for a model that cannot pack

    def fit_to_model(self, model: torch.nn.Module) -> list[str]:
        """Padded rows instead of packed ones for a model loraft cannot pack, said in one line."""
        from loraft.methods import method_of
        from loraft.packing import packing_problem

        problem = None
        if self.packing:
            problem = method_of(self.recipe).packing_problem or packing_problem(
                model, self.recipe.data.max_length
            )
        if problem is None:
            return []
        self.packing = False
        return [f"data.packing: {problem}; training on padded rows instead (data.packing=false)"]

    def tokenize(self, rows, tokenizer: PreTrainedTokenizerBase):
        """`loraft.tokenizer.encode_example` on each row, cut at `data.max_length`; only the
        target tokens (EOS included) carry labels."""
        from loraft.tokenizer import encode_example

        max_length = self.recipe.data.max_length

        def encode(row: dict[str, Any]) -> dict[str, list[int]]:
            ids, trained = encode_example(tokenizer, *self.prompt_and_target(row))
            labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, trained, strict=True)]
            return {"input_ids": ids[:max_length], "labels": labels[:max_length]}

        return rows.map(encode, remove_columns=rows.column_names, keep_in_memory=True)

    def with_targets(self, features, split: str):
        """Drop rows whose prompt fills `data.max_length` (nothing left to predict), saying so."""
        kept = features.filter(
            lambda feature: has_target(feature.get("labels", feature["input_ids"])), keep_in_memory=True
        )
        dropped = len(features) - len(kept)
        if dropped:
            print(
                f"data: dropped {dropped} of {len(features)} {split} rows whose prompt fills "
                f"data.max_length={self.recipe.data.max_length} (no target token left)"
            )
        if not len(kept):
            raise LoraftError(f"data: no {split} row has a target token; raise data.max_length")
        return kept

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """One padding-free packed row (`data.packing`), or one padded row per example."""
        from loraft.packing import pack_examples

        if self.packing:
            return pack_examples(features)
        return pad_right(features, tokenizer.pad_token_id)

    def count_targets(self, batch: Batch) -> int:
        """Predicted tokens: the label of position 0 is never predicted (nothing precedes it)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return token_loss_sum(model, batch)

    def example_values(self, model: torch.nn.Module, loader, accelerator) -> dict[str, list]:
        """Each example's summed next-token loss and its number of predicted tokens.

        Per-example sums go through `gather_for_metrics`, which drops the duplicates a
        distributed sampler adds to even out the last batch; only two numbers per example
        are kept, never logits.
        """
        import torch

        sums, counts = [], []
        for batch in loader:
            batch_sums, batch_counts = accelerator.gather_for_metrics(per_example_token_loss(model, batch))
            sums.append(batch_sums.cpu())
            counts.append(batch_counts.cpu())
        empty = [torch.zeros(0, dtype=torch.float64)]
        return {"loss_sum": torch.cat(sums or empty).tolist(), "tokens": torch.cat(counts or empty).tolist()}

    def metrics(self, values: dict[str, list]) -> dict:
        """Token-weighted mean loss (not a mean of example means) and its perplexity."""
        loss_sum, tokens = math.fsum(values["loss_sum"]), math.fsum(values["tokens"])
        mean = loss_sum / max(tokens, 1)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50)), "eval_tokens": int(tokens)}


class TextFileTask(CausalLMTask):
    """A task whose files are plain text, not tables: `texts` reads the train and eval texts."""

    reads_tables: ClassVar[bool] = False

    def texts(self) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def check_data(self) -> None:
        self.texts()

    def load_rows(self, preview: int | None = None):
        datasets = datasets_library()
        train, evaluation = self.texts()
        train_set = self.hold_out_validation(datasets.Dataset.from_dict({"text": train}), "data.train")
        return train_set, datasets.Dataset.from_dict({"text": evaluation})


def has_target(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels[1:])


def score_generations(hypotheses: list[str], references: list[str], metrics: list[str]) -> dict:
    """chrF, corpus and smoothed sentence BLEU (mean, best and worst tenth), distinct-1/2."""
    from loraft.text_metrics import (
        bleu_summary,
        chrf,
        corpus_bleu,
        distinct_n,
        evaluate_metric,
        sentence_bleus,
        signatures,
    )

    sentence = bleu_summary(sentence_bleus(hypotheses, references))
    scores = {
        "gen_chrf": chrf(hypotheses, references),
        "gen_bleu": corpus_bleu(hypotheses, references),
        "gen_sentence_bleu_mean": sentence["mean"],
        "gen_sentence_bleu_top10": sentence["top10_mean"],
        "gen_sentence_bleu_bottom10": sentence["bottom10_mean"],
        "gen_distinct_1": distinct_n(hypotheses, 1),
        "gen_distinct_2": distinct_n(hypotheses, 2),
        "gen_count": len(hypotheses),
    }
    for spec in metrics:
        scores.update(evaluate_metric(spec, hypotheses, references))
    return {**scores, "gen_signatures": signatures()}


def per_example_token_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses, number of predicted tokens) for each example of a batch,
    packed or not (fp64 sums)."""
    import torch

    losses, predicted = token_losses(model, batch)
    if "example_ids" in batch:  # a loss belongs to the example of the token it predicts
        owners, examples = batch["example_ids"][:, 1:][predicted], len(batch["cu_seq_lens"]) - 1
    else:
        rows = torch.arange(predicted.shape[0], device=predicted.device)[:, None].expand_as(predicted)
        owners, examples = rows[predicted], predicted.shape[0]
    fp64 = {"dtype": torch.float64, "device": losses.device}
    sums = torch.zeros(examples, **fp64).index_add_(0, owners, losses.double())
    return sums, torch.zeros(examples, **fp64).index_add_(0, owners, torch.ones(len(owners), **fp64))


def token_loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The sum of the next-token losses of the batch's targets (fp32), differentiable."""
    from loraft.lm_loss import fused_head_weight, head_loss_sum

    predicted, targets = predicted_positions(batch)
    weight = fused_head_weight(model)
    if weight is None:
        return logits_token_losses(model, batch)[predicted].sum()
    return head_loss_sum(final_hidden_states(model, batch)[:, :-1][predicted], weight, targets)


def token_losses(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of each predicted token (fp32, no gradients) and the (rows, length - 1) mask of
    the positions that predict them."""
    from loraft.lm_loss import fused_head_weight, head_token_losses

    predicted, targets = predicted_positions(batch)
    weight = fused_head_weight(model)
    if weight is None:
        return logits_token_losses(model, batch)[predicted], predicted
    hidden = final_hidden_states(model, batch)[:, :-1][predicted]
    return head_token_losses(hidden, weight, targets), predicted


def predicted_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a next token is predicted (position i predicts label i + 1), and those labels."""
    following = batch["labels"][:, 1:]
    predicted = following != IGNORE_INDEX
    return predicted, following[predicted]


def final_hidden_states(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The last layer's output (after the final layer norm), with no logits computed."""
    import torch

    none = torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device)
    outputs = model(**model_inputs(model, batch), logits_to_keep=none, output_hidden_states=True)
    return without_virtual_tokens(outputs.hidden_states[-1], batch)


def without_virtual_tokens(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The positions of the batch's own tokens: prompt tuning's virtual tokens come first."""
    return outputs[:, -batch["input_ids"].shape[1] :]


def logits_token_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy (fp32) of every position from the model's logits, 0 where the
    label is ignored: the path for heads `loraft.lm_loss` does not take (see there).

    The logits are flattened to contiguous (tokens, vocabulary) rows, the layout in which
    transformers computes its own loss, so the two agree to the last bit.
    """
    import torch.nn.functional as F

    logits = without_virtual_tokens(model(**model_inputs(model, batch)).logits, batch)
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    losses = F.cross_entropy(shifted, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return losses.view(logits.shape[0], -1)


def model_inputs(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The model's arguments for a padded or a packed batch."""
    from accelerate.utils import extract_model_from_parallel

    from loraft.packing import PACKED_ATTENTION, packed_inputs

    if "cu_seq_lens" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    attention = getattr(extract_model_from_parallel(model).config, "_attn_implementation", None)
    if attention != PACKED_ATTENTION:
        raise LoraftError(
            f"data.packing: the model's '{attention}' attention cannot keep packed examples apart; "
            "set data.packing: false"
        )
    return packed_inputs(batch)


def pad_right(features: list[dict[str, Any]], pad_token_id: int) -> Batch:
    """One row per example: input ids right-padded (pad id), labels too (ignored), the mask."""
    batch = pad_inputs(features, pad_token_id)
    labels = [{"input_ids": feature.get("labels", feature["input_ids"])} for feature in features]
    batch["labels"] = pad_inputs(labels, IGNORE_INDEX)["input_ids"]
    return batch
