"""Packing changes how many rows a batch needs, never a number: the same per-example losses and
gradients as one padded row per example (fp32, the tiny GPT-2)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import joker_recipe
from transformers import GPT2LMHeadModel

from loraft.data import data_roots
from loraft.packing import pack_examples
from loraft.tasks import build_task
from loraft.tasks.causal_lm import pad_right, per_example_token_loss, token_loss_sum
from loraft.tokenizer import load_tokenizer


def features(tiny_model_dir: Path, count: int) -> tuple[list[dict], object]:
    recipe = joker_recipe(tiny_model_dir, Path("unused"), "data.max_length=160")
    task = build_task(recipe, data_roots())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows, _ = task.rows()
    return task.tokenize(rows.select(range(count)), tokenizer).to_list(), tokenizer


def loss_and_gradient(model: GPT2LMHeadModel, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    sums, counts = per_example_token_loss(model, batch)
    token_loss_sum(model, batch).backward()
    return sums / counts, [parameter.grad.clone() for parameter in model.parameters()]


def test_packed_and_padded_batches_give_the_same_losses_and_gradients(tiny_model_dir: Path) -> None:
    examples, tokenizer = features(tiny_model_dir, 12)
    lengths = [len(example["input_ids"]) for example in examples]
    assert len(set(lengths)) > 6 and max(lengths) <= 160  # varied lengths, none cut
    packed = pack_examples(examples, 160, tokenizer.pad_token_id)
    padded = pad_right(examples, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples) // 2 + 1  # two or more examples a row
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum() == sum(lengths)
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    packed_loss, packed_grads = loss_and_gradient(model, packed)
    padded_loss, padded_grads = loss_and_gradient(model, padded)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads, strict=True):
        assert (packed_grad - padded_grad).norm() <= 1e-5 * padded_grad.norm()


def test_examples_fill_rows_first_fit_decreasing() -> None:
    examples = [{"input_ids": list(range(size))} for size in (7, 3, 5, 2, 6)]
    batch = pack_examples(examples, 10, pad_token_id=99)
    rows = [sorted({int(i) for i in row if i >= 0}) for row in batch["example_ids"]]
    assert rows == [[0, 1], [3, 4], [2]]  # 7+3, 6+2, 5: three rows of 10 instead of five
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert batch["labels"][0, 7].item() == -100  # an example's first token is never predicted


def test_length_grouping_reorders_an_epoch_but_keeps_its_examples() -> None:
    from loraft.batches import DataOrder

    lengths = tuple(int(n) for n in torch.randint(5, 300, (203,), generator=torch.Generator().manual_seed(0)))
    plain = DataOrder(203, 4, 2, 1, seed=7)
    grouped = DataOrder(203, 4, 2, 1, seed=7, lengths=lengths)

    def epoch(order: DataOrder) -> list[list[int]]:
        steps = range(1, order.steps_per_epoch + 1)
        return [[i for micro in order.micro_batches(step, 0) for i in micro.indices] for step in steps]

    def padding(steps: list[list[int]]) -> int:
        return sum(
            max(lengths[i] for i in step) * len(step) - sum(lengths[i] for i in step) for step in steps
        )

    assert sorted(sum(epoch(grouped), [])) == sorted(sum(epoch(plain), [])) == list(range(203))
    assert epoch(grouped) != epoch(plain)
    assert padding(epoch(grouped)) < padding(epoch(plain)) / 3
