"""LoRA targets a user can say without knowing the layer names: aliases, paths, names."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RECIPES, joker_recipe
from transformers import AutoModelForCausalLM

from loraft.errors import LoraftError
from loraft.methods import METHODS, apply_method
from loraft.models import FAMILIES
from loraft.models.loading import count_parameters
from loraft.models.targets import resolve_targets
from loraft.plan import plan_recipe
from loraft.recipe_files import load_recipe


def folded(names: list[str]) -> set[str]:
    return {".".join(part for part in name.split(".") if not part.isdigit()) for name in names}


def test_gpt2_aliases_tell_the_attention_output_from_the_mlp_output(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    resolved = resolve_targets(
        model,
        ["attention", "attention_output", "mlp", "all-linear", "attn.c_proj", "c_proj"],
        FAMILIES["gpt2"],
    )
    assert folded(resolved["attention"]) == {"transformer.h.attn.c_attn"}
    assert (
        folded(resolved["attention_output"])
        == folded(resolved["attn.c_proj"])
        == {"transformer.h.attn.c_proj"}
    )
    assert folded(resolved["mlp"]) == {"transformer.h.mlp.c_fc", "transformer.h.mlp.c_proj"}
    assert folded(resolved["c_proj"]) == {"transformer.h.attn.c_proj", "transformer.h.mlp.c_proj"}
    assert len(resolved["all-linear"]) == 8 and "lm_head" not in resolved["all-linear"]  # 4 a block


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "qwen2", "gemma"])
def test_every_alias_matches_layers_in_every_family(family: str, family_dirs: dict) -> None:
    model = AutoModelForCausalLM.from_pretrained(family_dirs[family])
    resolved = resolve_targets(
        model, ["attention", "attention_output", "mlp", "all-linear"], FAMILIES[family]
    )
    parts = [resolved[alias] for alias in ("attention", "attention_output", "mlp")]
    assert all(parts) and sorted(sum(parts, [])) == sorted(resolved["all-linear"])  # a partition


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2", "gemma"])
def test_plan_counts_what_training_trains(family: str, family_dirs: dict, tmp_path: Path) -> None:
    """`loraft plan` (meta device) gives PEFT's count of the real model, default targets too."""
    for targets in ("null", "[attention, mlp]"):
        recipe = joker_recipe(family_dirs[family], tmp_path / "run", f"lora.target_modules={targets}")
        plan = plan_recipe(recipe)
        model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs[family]), recipe, "causal_lm")
        assert (plan["trainable_params"], plan["total_params"]) == count_parameters(model)
        assert model.get_nb_trainable_parameters() == count_parameters(model)
        assert plan["architecture"] == FAMILIES[family].family and plan["method_details"][0].startswith(
            "lora"
        )


def test_targets_that_cannot_match_are_one_line(family_dirs: dict, tmp_path: Path, loraft) -> None:
    recipe = RECIPES / "news.yaml"
    llama = family_dirs["llama"]
    code, _, err = loraft("validate", recipe, "--no-data")  # a GPT-2 name on GPT-2 is fine
    assert code == 0, err
    cases = {
        "[c_attn]": "'c_attn' is not a Llama layer LoRA can adapt; use some of q_proj",
        "[mlp.q_proj]": "'mlp.q_proj' matches none",
        "[self_attn]": "'self_attn' is not a Llama layer LoRA can adapt",
    }
    for targets, message in cases.items():
        with pytest.raises(LoraftError, match=message):
            overrides = [f"model.name={llama}", f"lora.target_modules={targets}"]
            model = AutoModelForCausalLM.from_pretrained(llama)
            from loraft.checks import check_recipe

            loaded = load_recipe(recipe, overrides)
            check_recipe(loaded)
            METHODS["lora"].check(model, loaded, "causal_lm")
