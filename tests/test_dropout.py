"""loraft's cheaper CPU dropout keeps nn.Dropout's distribution, scaling, rounding and seeding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import joker_recipe
from torch import nn

from loraft.dropout import CheapMaskDropout, use_cheap_dropout
from loraft.methods import apply_method
from loraft.models.loading import build_base_model
from loraft.tokenizer import load_tokenizer


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_elements_are_kept_with_probability_one_minus_p_and_scaled(p: float) -> None:
    torch.manual_seed(0)
    inputs = torch.full((1001, 999), 3.0)  # an odd count: the last draw is half used
    outputs = CheapMaskDropout(p).train()(inputs)
    kept = outputs != 0
    count = inputs.numel()
    assert abs(kept.sum().item() - (1 - p) * count) < 5 * (p * (1 - p) * count) ** 0.5
    assert torch.equal(outputs[kept], (inputs * (1 / (1 - p)))[kept])  # as nn.Dropout scales
    # both halves of every 64-bit draw decide: even and odd elements alike
    even, odd = kept.flatten()[0::2].float().mean(), kept.flatten()[1::2].float().mean()
    assert abs(even - (1 - p)) < 0.005 and abs(odd - (1 - p)) < 0.005
    # neighbours are independent: P(both kept) = (1 - p)^2
    both = (kept.flatten()[0:-1:2] & kept.flatten()[1::2]).float().mean()
    assert abs(both - (1 - p) ** 2) < 0.005


def test_the_gradient_flows_through_the_kept_elements_only() -> None:
    """...from a one-byte mask kept for the backward pass (as nn.Dropout keeps), not a copy of
    the activations' size."""
    torch.manual_seed(1)
    inputs = torch.randn(64, 48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        outputs = CheapMaskDropout(0.2).train()(inputs)
    assert saved == [torch.bool]
    outputs.sum().backward()
    expected = (outputs != 0).float() / 0.8
    torch.testing.assert_close(inputs.grad, expected)


def test_bf16_values_are_scaled_then_rounded_once() -> None:
    """x / (1 - p) to the nearest bf16. (nn.Dropout on a CPU rounds the scale to bf16 first:
    1.109375 for p = 0.1, 0.16% low.)"""
    inputs = torch.randn(256, 256).to(torch.bfloat16)
    outputs = CheapMaskDropout(0.1).train()(inputs)
    kept = outputs != 0
    assert outputs.dtype == torch.bfloat16
    assert torch.equal(outputs[kept], (inputs * (1 / 0.9))[kept])


def test_the_same_seed_gives_the_same_mask_and_evaluation_keeps_everything() -> None:
    layer, inputs = CheapMaskDropout(0.3).train(), torch.ones(40, 40)
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(layer(inputs) != 0)
    assert torch.equal(*masks)
    assert not torch.equal(masks[0], layer(inputs) != 0)  # the generator moved on
    assert torch.equal(layer.eval()(inputs), inputs)


def test_every_dropout_of_a_trained_model_is_replaced(tiny_model_dir: Path) -> None:
    for method, dropout in (("full", []), ("lora", ["lora.dropout=0.1"])):
        recipe = joker_recipe(tiny_model_dir, Path("unused"), f"method={method}", *dropout)
        base = build_base_model(recipe, "causal_lm", load_tokenizer(str(tiny_model_dir)))
        model = apply_method(base, recipe, "causal_lm")
        dropouts = [type(module) for module in model.modules() if isinstance(module, nn.Dropout)]
        assert dropouts and set(dropouts) == {CheapMaskDropout}, method
    assert any("lora_dropout" in name for name, _ in model.named_modules())
    state = use_cheap_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))).state_dict()
    assert list(state) == ["0.weight", "0.bias"]  # checkpoints do not change
