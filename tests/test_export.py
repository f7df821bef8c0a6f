"""`loraft export`: adapters and merged models load in plain transformers/PEFT with the run's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import RECIPES
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from loraft.checkpoint import load_trained_model
from loraft.recipe_files import load_recipe
from loraft.run_dir import RunDirectory
from loraft.training import train_recipe

IDS = torch.tensor([[5, 17, 40, 2, 99, 7]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(input_ids=IDS).logits


def test_a_merged_lora_run_is_a_plain_transformers_model_with_the_same_logits(
    runs: dict, tmp_path: Path, loraft
) -> None:
    out = tmp_path / "merged"
    code, stdout, err = loraft("export", runs["lora"], "--out", out, "--merge")
    assert code == 0, err
    expected = logits(load_trained_model(RunDirectory.open(runs["lora"]), "best")[0])
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out)), expected, atol=1e-5, rtol=1e-5
    )
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for fact in (
        "Method: lora",
        "LoRA: rank 4, alpha 16, dropout 0.05, targets attention",
        "Trainable parameters: 2,048",
        "optimizer steps",
        "| eval_loss |",
    ):
        assert fact in card, fact
    code, _, err = loraft("export", runs["lora"], "--out", out)
    assert code == 2 and "already exists and is not empty" in err


def test_an_unmerged_adapter_on_a_scratch_base_carries_its_base(tmp_path: Path, loraft) -> None:
    run = tmp_path / "run"
    overrides = [
        "model.config.n_layer=1",
        "model.config.n_embd=32",
        "train.max_steps=3",
        f"output_dir={run}",
        "eval.generate=false",
    ]
    train_recipe(load_recipe(RECIPES / "quickstart.yaml", overrides))
    out = tmp_path / "adapter"
    assert loraft("export", run, "--out", out, "--checkpoint", "last")[0] == 0
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out)
    expected = logits(load_trained_model(RunDirectory.open(run), "last")[0])
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=1e-5)
    assert "library_name: peft" in (out / "README.md").read_text()


@pytest.mark.parametrize("method", ["lora", "head"])
def test_a_classifier_exports_with_its_head(
    tiny_model_dir: Path, tmp_path: Path, loraft, method: str
) -> None:
    data = tmp_path / "data.tsv"
    data.write_text(
        "sentence\tlabel\n" + "".join(f"film {i} {'good' if i % 2 else 'bad'}\t{i % 2}\n" for i in range(40))
    )
    run = tmp_path / "run"
    overrides = [
        f"model.name={tiny_model_dir}",
        f"method={method}",
        f"output_dir={run}",
        f"data.train={data}",
        "data.eval=null",
        "data.predict=null",
        "data.columns={text: sentence}",
        "data.labels=['0', '1']",
        "train.max_steps=4",
        "train.lr=1e-2",
    ]
    train_recipe(load_recipe(RECIPES / "sst-lora.yaml", overrides))
    out = tmp_path / "out"
    assert loraft("export", run, "--out", out, "--merge")[0] == 0
    exported = AutoModelForSequenceClassification.from_pretrained(out)
    expected = logits(load_trained_model(RunDirectory.open(run), "best")[0])
    torch.testing.assert_close(logits(exported), expected, atol=1e-5, rtol=1e-5)
    assert "pipeline_tag: text-classification" in (out / "README.md").read_text()


def test_pushing_without_the_hub_is_one_line(runs: dict, tmp_path: Path, loraft) -> None:
    code, _, err = loraft("export", runs["full"], "--out", tmp_path / "x", "--push-to-hub", "me/model")
    assert code == 2 and err.startswith("error: --push-to-hub: cannot upload to me/model")
    assert (tmp_path / "x" / "model.safetensors").is_file()  # the export itself is done
