"""QLoRA (`model.quantize: 4bit`): LoRA on a base whose linear layers are NF4 trains exactly as
LoRA on those weights dequantised, resumes exactly, and exports an adapter for the 4-bit base;
what it cannot do is one line. bitsandbytes is in the dev extra (4-bit runs on a CPU from 0.50)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from test_families import case_recipe, logits_of, train_losses, trainable_weights
from test_methods import crash_after_step_3_then_resume
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from loraft.evaluation import evaluate_run
from loraft.export import export_run
from loraft.models.quantize import keep_training_kernels
from loraft.models.targets import linear_types
from loraft.training import train_recipe

pytest.importorskip("bitsandbytes", reason="the qlora extra (bitsandbytes) is not installed")

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def quantized(model_dir: Path, repack: bool = False):
    """The NF4 model; `repack`: with bitsandbytes' CPU inference kernel (loraft's runs: without)."""
    config = BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, device_map="cpu")
    if not repack:
        keep_training_kernels(model)
    return model


def save_dequantized(model_dir: Path, out: Path) -> Path:
    """The model with each linear layer's weight replaced by its NF4 value, saved plainly."""
    import bitsandbytes as bnb

    four_bit = quantized(model_dir)
    names = [name for name, module in four_bit.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    dequantized = four_bit.dequantize()
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    assert names
    for name in names:
        layer, weight = plain.get_submodule(name), dequantized.get_submodule(name).weight.data
        assert isinstance(layer, linear_types())
        layer.weight.data = weight if isinstance(layer, torch.nn.Linear) else weight.T.contiguous()
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def names_of_linear(model) -> list[str]:
    output = model.get_output_embeddings()
    return [name for name, m in model.named_modules() if isinstance(m, linear_types()) and m is not output]


@pytest.mark.parametrize("family", ["llama", pytest.param("gpt2", marks=pytest.mark.matrix)])
def test_a_4bit_base_trains_lora_as_its_dequantized_weights_do(
    family: str, family_dirs: dict, tmp_path: Path, monkeypatch
) -> None:
    model_dir = family_dirs[family]

    def recipe(base: Path, run: str, *more: str):
        # an evaluation between steps: bitsandbytes' CPU inference repacking must stay off
        return case_recipe(
            base, tmp_path / run, "causal_lm", "lora", True, tmp_path, "train.eval_every=2", *more
        )

    result = train_recipe(recipe(model_dir, "qlora", "model.quantize=4bit"))
    losses = train_losses(tmp_path / "qlora")
    assert losses[-1] < losses[0], losses
    reference = save_dequantized(model_dir, tmp_path / "dequantized")
    train_recipe(recipe(reference, "reference"))
    np.testing.assert_allclose(losses, train_losses(tmp_path / "reference"), rtol=1e-5)

    recorded = result.summary["final_eval"]["eval_loss"]  # `loraft eval` on the 4-bit base again
    assert evaluate_run(tmp_path / "qlora", checkpoint="last")["eval_loss"] == pytest.approx(
        recorded, rel=1e-6
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    adapter = export_run(tmp_path / "qlora", tmp_path / "adapter", checkpoint="last")
    reloaded = PeftModel.from_pretrained(quantized(model_dir), adapter)
    torch.testing.assert_close(logits_of(reloaded, tokenizer), logits_of(result.model, tokenizer))
    merged = export_run(tmp_path / "qlora", tmp_path / "merged", merge=True, checkpoint="last")
    plain = AutoModelForCausalLM.from_pretrained(merged)  # no bitsandbytes: full precision
    assert type(plain.get_submodule(names_of_linear(plain)[0])) is type(
        AutoModelForCausalLM.from_pretrained(model_dir).get_submodule(names_of_linear(plain)[0])
    )
    torch.testing.assert_close(
        logits_of(plain, tokenizer), logits_of(result.model, tokenizer), rtol=1e-5, atol=1e-5
    )

    resumed = crash_after_step_3_then_resume(
        monkeypatch, lambda *more: train_recipe(recipe(model_dir, "crashed", "model.quantize=4bit", *more))
    )
    np.testing.assert_allclose(train_losses(tmp_path / "crashed"), losses, rtol=1e-6)
    for name, weight in trainable_weights(resumed.model).items():
        torch.testing.assert_close(weight, trainable_weights(result.model)[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["method=ia3"],
            "model.quantize: a 4-bit base trains LoRA adapters (QLoRA), not method 'ia3'; use method: "
            "lora, or remove model.quantize",
        ),
        (
            ["model.name=null", "model.config.layers=2"],
            "model.quantize: a model trained from scratch has no weights to quantize",
        ),
    ],
)
def test_what_a_4bit_base_cannot_do_is_one_line(overrides: list[str], expected: str, loraft) -> None:
    code, out, err = loraft("validate", "--no-data", "recipes/joker.yaml", "model.quantize=4bit", *overrides)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_without_bitsandbytes_a_4bit_base_is_one_line(loraft, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    code, out, err = loraft("validate", "--no-data", "recipes/joker.yaml", "model.quantize=4bit")
    assert code == 2 and err.strip().splitlines() == [
        "error: recipes/joker.yaml: model.quantize: 4bit needs bitsandbytes, which is not installed: "
        "pip install 'loraft[qlora]'"
    ]
