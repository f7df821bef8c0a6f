"""Packing changes how a batch is laid out, never a number: the same per-example losses and
gradients as one padded row per example (fp32, the tiny GPT-2), no attention across examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import joker_recipe
from transformers import GPT2LMHeadModel

from loraft.data import data_roots
from loraft.errors import LoraftError
from loraft.models.loading import with_fast_kernels
from loraft.packing import pack_examples
from loraft.tasks import build_task
from loraft.tasks.causal_lm import model_inputs, pad_right, per_example_token_loss, token_loss_sum
from loraft.tokenizer import load_tokenizer


def features(tiny_model_dir: Path, count: int) -> tuple[list[dict], object]:
    recipe = joker_recipe(tiny_model_dir, Path("unused"), "data.max_length=160")
    task = build_task(recipe, data_roots())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows, _ = task.rows()
    return task.tokenize(rows.select(range(count)), tokenizer).to_list(), tokenizer


def tiny_model(tiny_model_dir: Path) -> GPT2LMHeadModel:
    return with_fast_kernels(GPT2LMHeadModel.from_pretrained(tiny_model_dir))


def loss_and_gradient(model: GPT2LMHeadModel, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    sums, counts = per_example_token_loss(model, batch)
    token_loss_sum(model, batch).backward()
    return sums / counts, [parameter.grad.clone() for parameter in model.parameters()]


def test_packed_and_padded_batches_give_the_same_losses_and_gradients(tiny_model_dir: Path) -> None:
    examples, tokenizer = features(tiny_model_dir, 12)
    lengths = [len(example["input_ids"]) for example in examples]
    assert len(set(lengths)) > 6 and max(lengths) <= 160  # varied lengths, none cut
    packed = pack_examples(examples)
    padded = pad_right(examples, tokenizer.pad_token_id)
    assert packed["input_ids"].shape == (1, sum(lengths))  # one row, no padding
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum() == sum(lengths)
    model = tiny_model(tiny_model_dir)
    packed_loss, packed_grads = loss_and_gradient(model, packed)
    padded_loss, padded_grads = loss_and_gradient(model, padded)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads, strict=True):
        assert (packed_grad - padded_grad).norm() <= 1e-5 * padded_grad.norm()


def test_examples_lie_back_to_back_each_with_its_own_positions() -> None:
    examples = [{"input_ids": list(range(10, 10 + size))} for size in (4, 2, 3)]
    batch = pack_examples(examples)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 10, 11, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert batch["example_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2]]
    assert batch["cu_seq_lens"].tolist() == [0, 4, 6, 9] and batch["cu_seq_lens"].dtype == torch.int32
    # an example's first token is never predicted: nothing before it in its own text
    assert batch["labels"].tolist() == [[-100, 11, 12, 13, -100, 11, -100, 11, 12]]


def test_no_example_sees_another(tiny_model_dir: Path) -> None:
    examples, _ = features(tiny_model_dir, 3)
    model = tiny_model(tiny_model_dir).eval()
    changed = [{"input_ids": [(i + 7) % 1000 for i in examples[0]["input_ids"]]}, *examples[1:]]
    with torch.no_grad():
        logits = [model(**model_inputs(model, pack_examples(batch))).logits for batch in (examples, changed)]
    first = len(examples[0]["input_ids"])
    assert not torch.allclose(logits[0][:, :first], logits[1][:, :first])
    torch.testing.assert_close(logits[0][:, first:], logits[1][:, first:], rtol=0, atol=0)


def test_a_model_whose_attention_cannot_pack_is_a_one_line_error(tiny_model_dir: Path) -> None:
    examples, _ = features(tiny_model_dir, 2)
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager")
    with_fast_kernels(model)  # keeps a choice other than SDPA
    with pytest.raises(LoraftError, match="data.packing: the model's 'eager' attention cannot"):
        token_loss_sum(model, pack_examples(examples))


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


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2", "gemma"])
def test_packed_equals_padded_in_every_family(family: str, family_dirs: dict) -> None:
    """Grouped-query attention (Llama, Qwen2, Gemma), rotary positions restarting at each
    example, q/k/v biases (Qwen2): per-example losses and every gradient as padded, 1e-5."""
    from transformers import AutoModelForCausalLM

    from loraft.packing import packing_problem

    directory = family_dirs[family]
    examples, tokenizer = features(directory, 10)
    model = with_fast_kernels(AutoModelForCausalLM.from_pretrained(directory))
    assert packing_problem(model, 160) is None
    packed_loss, packed_grads = loss_and_gradient(model, pack_examples(examples))
    padded_loss, padded_grads = loss_and_gradient(model, pad_right(examples, tokenizer.pad_token_id))
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads, strict=True):
        assert (packed_grad - padded_grad).norm() <= 1e-5 * padded_grad.norm() + 1e-9


def test_a_family_loraft_has_not_tested_trains_padded_with_a_note(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """An OPT model takes its positions from the attention mask: packing would be silently
    wrong, so loraft trains it on padded rows and says so."""
    from transformers import OPTConfig, OPTForCausalLM

    from loraft.packing import packing_problem

    model = with_fast_kernels(
        OPTForCausalLM(
            OPTConfig(
                hidden_size=16,
                num_hidden_layers=1,
                ffn_dim=32,
                num_attention_heads=2,
                vocab_size=100,
                word_embed_proj_dim=16,
            )
        )
    )
    assert "not on 'opt' models" in packing_problem(model, 64)
    task = build_task(joker_recipe(tmp_path, tmp_path / "run"), data_roots())
    (line,) = task.fit_to_model(model)
    assert line.startswith("data.packing: ") and "training on padded rows instead" in line
    rows, _ = task.rows()
    batch = task.collate(
        task.tokenize(rows.select(range(3)), load_tokenizer(str(tiny_model_dir))).to_list(),
        load_tokenizer(str(tiny_model_dir)),
    )
    assert "cu_seq_lens" not in batch and batch["input_ids"].shape[0] == 3  # one padded row each
