"""The chunked output-layer loss gives the numbers of the plain logits path: the same loss and
the same gradients (fp32, 1e-5), for full fine-tuning (a tied, trained head) and LoRA (a frozen
head), in training and in evaluation, packed or padded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from test_packing import features, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2LMHeadModel

from loraft import lm_loss
from loraft.models.loading import with_fast_kernels
from loraft.packing import pack_examples
from loraft.tasks import causal_lm
from loraft.tasks.causal_lm import pad_right, per_example_token_loss, token_loss_sum


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks that do not divide the sizes below: every edge of the chunking is crossed."""
    monkeypatch.setattr(lm_loss, "ROWS", 7)
    monkeypatch.setattr(lm_loss, "COLUMNS", 300)


def plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_loss, "fused_head_weight", lambda model: None)


def close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert (ours - reference).norm() <= 1e-5 * reference.norm() + 1e-7


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("weight_trains", [True, False])
def test_head_loss_and_gradients_equal_cross_entropy(weight_trains: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, generator=generator, requires_grad=True)
    weight = (torch.randn(1000, 16, generator=generator) * 0.3).requires_grad_(weight_trains)
    targets = torch.randint(0, 1000, (30,), generator=generator)
    targets[:3] = torch.tensor([0, 299, 999])  # first and last columns of a chunk, and of all
    expected = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 0.37, [hidden, weight] if weight_trains else [hidden])
    ours = lm_loss.head_loss_sum(hidden, weight, targets)
    grads = torch.autograd.grad(ours * 0.37, [hidden, weight] if weight_trains else [hidden])
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        close(grad, expected_grad)
    per_token = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    torch.testing.assert_close(lm_loss.head_token_losses(hidden, weight, targets), per_token)


def model_loss_and_gradients(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = token_loss_sum(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("packed", [True, False])
def test_model_loss_and_gradients_equal_the_logits_path(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str, packed: bool
) -> None:
    examples, _ = features(tiny_model_dir, 6)
    batch = pack_examples(examples) if packed else pad_right(examples, 0)
    model = tiny_model(tiny_model_dir)
    if method == "lora":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
        model = get_peft_model(model, config)
        torch.nn.init.normal_(model.base_model.model.transformer.h[0].attn.c_attn.lora_B.default.weight)
    assert lm_loss.fused_head_weight(model) is not None
    loss, grads = model_loss_and_gradients(model, batch)
    with torch.inference_mode():
        sums, counts = per_example_token_loss(model, batch)
    with monkeypatch.context() as patch:
        plain_path(patch)
        expected_loss, expected_grads = model_loss_and_gradients(model, batch)
        with torch.inference_mode():
            expected_sums, expected_counts = per_example_token_loss(model, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-5)
    assert len(grads) == len(expected_grads) > 0
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        close(grad, expected_grad)
    torch.testing.assert_close(sums, expected_sums, rtol=1e-6, atol=1e-5)
    assert torch.equal(counts, expected_counts)
    assert counts.sum() == causal_lm.predicted_positions(batch)[0].sum()


def test_bf16_autocast_matches_the_logits_path_under_autocast(tiny_model_dir: Path, monkeypatch) -> None:
    examples, _ = features(tiny_model_dir, 6)
    batch = pack_examples(examples)
    model = tiny_model(tiny_model_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = model_loss_and_gradients(model, batch)
        plain_path(monkeypatch)
        expected_loss, expected_grads = model_loss_and_gradients(model, batch)
    assert all(grad.dtype == torch.float32 for grad in grads)
    torch.testing.assert_close(loss, expected_loss, rtol=2e-3, atol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert (grad - expected_grad).norm() <= 0.05 * expected_grad.norm()


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_heads_the_chunked_loss_cannot_use_take_the_logits_path(tiny_model_dir: Path) -> None:
    model = tiny_model(tiny_model_dir)
    assert lm_loss.fused_head_weight(model) is model.lm_head.weight
    on_head = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"]))
    assert lm_loss.fused_head_weight(on_head) is None  # LoRA on the head itself
    sharded = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    sharded.lm_head.weight = torch.nn.Parameter(torch.zeros(0))  # as ZeRO-3 and FSDP leave it
    assert lm_loss.fused_head_weight(sharded) is None


def test_no_target_gives_zero_gradients() -> None:
    """A placeholder micro-batch (every target ignored) adds nothing to the weight's gradient."""
    hidden = torch.randn(0, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    torch.full((1000, 16), float("nan")).sum()  # leaves freed memory the gradient may be given
    loss = lm_loss.head_loss_sum(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.equal(weight.grad, torch.zeros_like(weight))


class HeadCasts(TorchDispatchMode):
    """Counts the casts of a (vocabulary x width) weight, the output layer's."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].shape == self.shape:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_head_weight_is_cast_once_while_it_is_unchanged(tiny_model_dir: Path, method: str) -> None:
    """Under autocast the output weight is cast for the loss once per value it takes: once a run
    when frozen (LoRA), once an optimizer step when trained, not once a micro-batch; and no
    empty product casts it for the zero logits the loss asks the model for. The losses are
    those of a fresh cast every time."""
    examples, _ = features(tiny_model_dir, 6)
    batch = pack_examples(examples)
    model = tiny_model(tiny_model_dir)
    assert type(model.lm_head) is lm_loss.OutputLayer
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    # fused AdamW, as training uses: it updates weights without bumping their version counter
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01, fused=True)
    head = lm_loss.fused_head_weight(model)
    casts, losses, fresh = HeadCasts(head.shape), [], []
    for _ in range(2):  # optimizer steps of 2 micro-batches each
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16), casts:
                loss = token_loss_sum(model, batch)
            loss.backward()
            losses.append(loss.detach())
            kept = dict(lm_loss._CASTS)
            lm_loss._CASTS.clear()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                fresh.append(token_loss_sum(model, batch))
            lm_loss._CASTS.clear()
            lm_loss._CASTS.update(kept)
        optimizer.step()
        optimizer.zero_grad()
    assert casts.count == (2 if method == "full" else 1)
    assert torch.equal(torch.stack(losses), torch.stack(fresh))
    assert losses[0] != losses[-1]  # the steps changed the model


def test_a_tied_embeddings_sparse_gradient_gives_the_dense_one(tiny_model_dir: Path) -> None:
    """Full fine-tuning with the tied embedding's gradient sparse: the weight's gradient is
    dense and equal to the one a dense embedding backward gives, and fused AdamW takes it."""
    examples, _ = features(tiny_model_dir, 6)
    batch = pack_examples(examples)
    model = tiny_model(tiny_model_dir)
    lm_loss.sparse_tied_embedding(model)
    assert model.transformer.wte.sparse and model.transformer.wte.weight is model.lm_head.weight
    loss, grads = model_loss_and_gradients(model, batch)
    model.transformer.wte.sparse = False
    expected_loss, expected_grads = model_loss_and_gradients(model, batch)
    assert torch.equal(loss, expected_loss)
    assert all(not grad.is_sparse for grad in grads)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        close(grad, expected_grad)  # the same sums, added in another order
    model.transformer.wte.sparse = True
    model_loss_and_gradients(model, batch)
    torch.optim.AdamW(model.parameters(), fused=True).step()
    untied = with_fast_kernels(GPT2LMHeadModel.from_pretrained(tiny_model_dir, tie_word_embeddings=False))
    lm_loss.sparse_tied_embedding(untied)
    assert not untied.transformer.wte.sparse  # its gradient would be sparse: fused AdamW refuses those


def test_one_process_training_makes_the_tied_embedding_sparse(tiny_model_dir: Path, tmp_path: Path) -> None:
    from conftest import joker_recipe

    from loraft.training import train_recipe

    recipe = joker_recipe(tiny_model_dir, tmp_path / "run", "method=full", "train.max_steps=2")
    assert train_recipe(recipe).model.get_input_embeddings().sparse
