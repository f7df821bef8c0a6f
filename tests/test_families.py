"""Every family loraft knows, through the same assertions (PEFT's decoder-model matrix): a tiny
model of each, x {causal LM, classification} x {full, LoRA on all-linear} x {packed, padded}.

Each case trains on one repeated batch (a falling, finite loss), exports (adapter and merged)
and reloads in plain transformers/PEFT to the trained model's logits, resumes after a crash
to the uninterrupted run's numbers, and gives the same step with batch 8 x 1 and 4 x 2; all
in fp32, to 1e-5. The default suite runs one LoRA case per family; `-m matrix` runs them all
(`.ci/run` does).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ADDS_BOS, FAMILY_SHAPES, JOKER, RECIPES, read_records
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from loraft.export import export_run
from loraft.recipe_files import load_recipe
from loraft.trainer import Trainer
from loraft.training import train_recipe

FAMILIES = list(FAMILY_SHAPES)
CASES = [
    (kind, method, packing)
    for kind in ("causal_lm", "classification")
    for method in ("lora", "full")
    for packing in ((True, False) if kind == "causal_lm" else (False,))
]
SMOKE = ("causal_lm", "lora", True)  # the case every family runs in the default suite


def matrix_params() -> list:
    return [
        pytest.param(
            family,
            *case,
            marks=() if case == SMOKE else pytest.mark.matrix,
            id=f"{family}-{'-'.join(map(str, case))}",
        )
        for family in FAMILIES
        for case in CASES
    ]


@pytest.fixture(scope="session")
def labelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classification table from the shipped Joker prompts (a question or not)."""
    path = tmp_path_factory.mktemp("labelled") / "questions.csv"
    rows = [json.loads(line)["prompt"] for line in JOKER.read_text().splitlines()][:40]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sentence", "sentiment"])  # the CS224n columns sst-lora.yaml maps
        writer.writerows((text, int(text.strip().endswith("?"))) for text in rows)
    return path


def case_recipe(
    model_dir: Path, run: Path, kind: str, method: str, packing: bool, table: Path, *overrides: str
):
    """A quick fp32 recipe of the case: 8 examples, one batch of all of them a step."""
    quick = [
        f"model.name={model_dir}",
        f"output_dir={run}",
        f"method={method}",
        f"train.lr={'1e-2' if method == 'lora' else '2e-3'}",
        "train.precision=fp32",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.log_every=1",
        "train.save_every=2",
        "train.eval_every=4",
        "eval.at_start=false",
        "data.train_size=8",
        "data.eval_size=4",
    ]
    if method == "lora":
        quick += ["lora.target_modules=[all-linear]", "lora.dropout=0"]
    if kind == "causal_lm":
        quick += ["data.max_length=48", "eval.generate=false", f"data.packing={str(packing).lower()}"]
        return load_recipe(RECIPES / "joker.yaml", [*quick, *overrides])
    quick += [f"data.train={table}", "data.labels=[0, 1]", "data.max_length=32"]
    return load_recipe(RECIPES / "sst-lora.yaml", [*quick, "data.eval=null", "data.predict=null", *overrides])


def train_losses(run: Path) -> list[float]:
    return [record["loss"] for record in read_records(run, "train")]


def logits_of(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = tokenizer(["Why so serious?", "a b c d e f g"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trained weights but the biases of the attention's inputs: the key bias changes no
    attention score (softmax is shift-invariant), so its gradient is rounding noise that AdamW
    scales up to full steps, different for every split of the batch."""
    from loraft.models.loading import architecture_of

    inputs = architecture_of(model).attention
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad and not (name.endswith(".bias") and any(f"{i}." in name for i in inputs))
    }


@pytest.mark.parametrize(("family", "kind", "method", "packing"), matrix_params())
def test_each_family_trains_exports_resumes_and_splits_alike(
    family: str,
    kind: str,
    method: str,
    packing: bool,
    family_dirs: dict,
    labelled_file: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    model_dir = family_dirs[family]
    recipe = case_recipe(model_dir, tmp_path / "whole", kind, method, packing, labelled_file)
    result = train_recipe(recipe)
    whole = train_losses(tmp_path / "whole")
    assert len(whole) == 4 and all(np.isfinite(whole)) and whole[-1] < whole[0], whole

    # Export: adapter and merged, reloaded by plain transformers/PEFT, give the trained logits.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "whole" / "checkpoints" / "last")
    expected = logits_of(result.model, tokenizer)
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    options = {"num_labels": 2, "pad_token_id": tokenizer.pad_token_id} if kind == "classification" else {}
    merged = export_run(tmp_path / "whole", tmp_path / "merged", merge=True, checkpoint="last")
    torch.testing.assert_close(
        logits_of(auto.from_pretrained(merged), tokenizer), expected, rtol=1e-5, atol=1e-5
    )
    if method == "lora":
        adapter = export_run(tmp_path / "whole", tmp_path / "adapter", checkpoint="last")
        reloaded = PeftModel.from_pretrained(auto.from_pretrained(model_dir, **options), adapter)
        torch.testing.assert_close(logits_of(reloaded, tokenizer), expected, rtol=1e-5, atol=1e-5)
        card = (adapter / "README.md").read_text()
        assert f"- {family}\n" in card and "targets all-linear" in card  # the real family, tagged

    # A crash after step 3 (the last state is step 2's), then --resume: the same losses and weights.
    real_step = Trainer.train_step

    def crash_after_step_3(self, step):
        result = real_step(self, step)
        if step == 3 and not getattr(self, "_resumed", False):
            raise KeyboardInterrupt  # as a kill would: no state saved for step 3
        return result

    monkeypatch.setattr(Trainer, "train_step", crash_after_step_3)
    crashed = case_recipe(model_dir, tmp_path / "crashed", kind, method, packing, labelled_file)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(crashed)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = train_recipe(
        case_recipe(
            model_dir, tmp_path / "crashed", kind, method, packing, labelled_file, "train.resume=true"
        )
    )
    np.testing.assert_allclose(train_losses(tmp_path / "crashed"), whole, rtol=1e-6)
    for name, weight in trainable_weights(resumed.model).items():
        torch.testing.assert_close(weight, trainable_weights(result.model)[name], rtol=1e-5, atol=1e-6)

    # Batch 8 x 1 and 4 x 2: the same step.
    split = train_recipe(
        case_recipe(
            model_dir,
            tmp_path / "split",
            kind,
            method,
            packing,
            labelled_file,
            "train.batch_size=4",
            "train.grad_accum=2",
        )
    )
    np.testing.assert_allclose(train_losses(tmp_path / "split"), whole, rtol=1e-5)
    # Classification rows are padded to each micro-batch's longest text, so 4 x 2 multiplies
    # other shapes than 8 x 1: rounding differs by 1e-7, and AdamW's normalised first steps
    # turn that into up to 1e-4 of the weights where a gradient is nearly zero. The losses
    # above agree to 1e-5 all the same.
    tolerance = 1e-5 if kind == "causal_lm" else 3e-4
    for name, weight in trainable_weights(split.model).items():
        reference = trainable_weights(result.model)[name]
        assert (weight - reference).norm() <= tolerance * reference.norm() + 1e-7, name


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_tokenizes_by_one_rule(family: str, family_dirs: dict) -> None:
    """BOS once at the start where the tokenizer adds one, EOS after the target; prompt tokens
    carry no label; generation prompts start the same way."""
    from loraft.generation import encode_prompts
    from loraft.tokenizer import encode_example, load_tokenizer

    tokenizer = load_tokenizer(str(family_dirs[family]))
    ids, trained = encode_example(tokenizer, "Person: hi\nJoker:", " Why so serious?")
    starts_with_bos = family in ADDS_BOS
    assert (ids[0] == tokenizer.bos_token_id) is starts_with_bos
    assert ids.count(tokenizer.bos_token_id) == (
        1 if starts_with_bos else int(tokenizer.bos_token_id == tokenizer.eos_token_id)
    )
    assert ids[-1] == tokenizer.eos_token_id and trained[-1] and not trained[0]
    assert (
        tokenizer.decode([i for i, t in zip(ids, trained, strict=True) if t], skip_special_tokens=True)
        == " Why so serious?"
    )
    prompt = encode_prompts(tokenizer, ["Person: hi\nJoker:"])[0]
    assert prompt == ids[: len(prompt)] and len(prompt) == trained.index(True)
