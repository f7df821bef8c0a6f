"""Methods and parameter accounting: our counts are PEFT's own, for GPT-2 and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import GPT2LMHeadModel
from transformers.activations import GELUTanh, NewGELUActivation

from loraft.checkpoint import load_trained_model
from loraft.errors import LoraftError
from loraft.methods import apply_method
from loraft.models.loading import build_base_model, count_parameters, with_fast_kernels
from loraft.packing import PACKED_ATTENTION
from loraft.plan import plan_recipe
from loraft.recipe_files import load_recipe
from loraft.run_dir import RunDirectory
from loraft.tokenizer import load_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(("rank", "trainable"), [(4, 147_456), (8, 294_912)])
def test_gpt2_small_lora_counts_match_peft(rank: int, trainable: int) -> None:
    plan = plan_recipe(load_recipe(RECIPES / "joker.yaml", [f"lora.r={rank}"]))
    assert plan["trainable_params"] == trainable
    assert plan["total_params"] == 124_439_808 + trainable
    assert plan["trainable_pct"] == pytest.approx(100 * trainable / plan["total_params"])


def test_plan_knows_the_four_gpt2_sizes_offline() -> None:
    totals = {
        size: plan_recipe(load_recipe(RECIPES / "news-full.yaml", [f"model.name={size}"]))["total_params"]
        for size in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
    }
    assert totals == {
        "gpt2": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
        "gpt2-xl": 1_557_611_200,
    }


def test_plan_memory_shrinks_with_lora() -> None:
    lora = plan_recipe(load_recipe(RECIPES / "news.yaml"))["memory_mb"]
    full = plan_recipe(load_recipe(RECIPES / "news-full.yaml"))["memory_mb"]
    assert lora["optimizer"] < full["optimizer"] / 100
    assert lora["total"] < full["total"]


def test_plan_counts_one_chunk_of_logits_where_the_loss_is_chunked() -> None:
    """GPT-2's LM loss never builds the whole logits (`loraft.lm_loss`); a LoRA-wrapped output
    layer has no fused loss, so there the whole logits and their gradient are counted."""

    def activations(batch: int, *overrides: str) -> float:
        overrides = ("train.precision=fp32", f"train.batch_size={batch}", *overrides)
        recipe = load_recipe(RECIPES / "news.yaml", list(overrides))
        return plan_recipe(recipe)["memory_mb"]["activations"]

    def whole_logits_mb(batch: int) -> float:
        return batch * 128 * 50_257 * 8 / 2**20

    on_head = "lora.target_modules=[lm_head]"
    gaps = {batch: activations(batch, on_head) - activations(batch) for batch in (8, 16)}
    assert gaps[8] == pytest.approx(whole_logits_mb(8), rel=0.35)
    # past one chunk of rows the chunked loss stays the same size, the whole logits double
    assert gaps[16] - gaps[8] == pytest.approx(whole_logits_mb(8), rel=0.05)


def test_plan_counts_prompt_tunings_virtual_tokens() -> None:
    def activations(tokens: int) -> float:
        overrides = ["method=prompt_tuning", f"prompt_tuning.num_virtual_tokens={tokens}"]
        return plan_recipe(load_recipe(RECIPES / "news.yaml", overrides))["memory_mb"]["activations"]

    assert activations(128) > 1.4 * activations(1)  # the layers see twice the positions


@pytest.mark.parametrize("method", ["lora", "full"])
def test_counts_equal_peft_on_a_real_tiny_model(tiny_model_dir: Path, method: str) -> None:
    recipe = load_recipe(RECIPES / "news.yaml", [f"model.name={tiny_model_dir}", f"method={method}"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = apply_method(build_base_model(recipe, "causal_lm", tokenizer), recipe, "causal_lm")
    trainable, total = count_parameters(model)
    if method == "lora":
        assert isinstance(model, PeftModel)
        assert (trainable, total) == model.get_nb_trainable_parameters()
        assert model.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D layers
        assert trainable == 8 * (64 + 3 * 64) * 2  # A (8x64) + B (192x8) on c_attn, 2 layers
    else:
        assert trainable == total == sum(p.numel() for p in model.parameters())


def test_unknown_target_module_is_a_clear_error(tiny_model_dir: Path) -> None:
    recipe = load_recipe(
        RECIPES / "news.yaml", [f"model.name={tiny_model_dir}", "lora.target_modules=[q_proj]"]
    )
    with pytest.raises(LoraftError, match=r"lora.target_modules: \['q_proj'\] match no module.*c_attn"):
        apply_method(
            build_base_model(recipe, "causal_lm", load_tokenizer(str(tiny_model_dir))), recipe, "causal_lm"
        )


def test_missing_model_path_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(RECIPES / "news.yaml", [f"model.name={tmp_path / 'nothing'}"])
    with pytest.raises(LoraftError, match="model.tokenizer: cannot load"):
        load_tokenizer(str(tmp_path / "nothing"))
    with pytest.raises(LoraftError, match="model.name: cannot load"):
        build_base_model(recipe, "causal_lm", load_tokenizer(str(tiny_model_dir)))


def test_an_unreachable_hub_fails_in_seconds_with_a_hint(tiny_model_dir: Path, monkeypatch) -> None:
    """No network: one line naming HF_HUB_OFFLINE and --data-root, not minutes of retries."""
    import time

    from loraft import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    hub.hub_reachable.cache_clear()
    recipe = load_recipe(RECIPES / "news.yaml", ["model.name=someone/not-cached-model"])
    started = time.perf_counter()
    with pytest.raises(LoraftError) as error:
        build_base_model(recipe, "causal_lm", load_tokenizer(str(tiny_model_dir)))
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE=1" in message and "--data-root" in message
    hub.hub_reachable.cache_clear()


def test_the_fused_gelu_is_gpt2s_gelu_to_fp32_rounding(tiny_model_dir: Path) -> None:
    plain = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    fused = with_fast_kernels(GPT2LMHeadModel.from_pretrained(tiny_model_dir))
    assert type(plain.transformer.h[0].mlp.act) is NewGELUActivation
    assert type(fused.transformer.h[0].mlp.act) is GELUTanh
    assert fused.config.activation_function == "gelu_new"  # what a checkpoint says is unchanged
    ids = torch.randint(0, plain.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, ours = plain(ids).logits, fused(ids).logits
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()
    x = torch.linspace(-8, 8, 10_001, dtype=torch.float64)
    assert (GELUTanh()(x) - NewGELUActivation()(x)).abs().max() < 1e-14  # the same function


def test_every_model_loraft_loads_uses_its_fast_kernels(runs: dict[str, Path]) -> None:
    for method in ("full", "lora"):
        model, _ = load_trained_model(RunDirectory(runs[method]), "best")
        activations = [type(m) for m in model.modules() if "GELU" in type(m).__name__]
        assert activations and set(activations) == {GELUTanh}, method
        assert model.config._attn_implementation == PACKED_ATTENTION, method
    saved = json.loads((runs["full"] / "checkpoints" / "best" / "config.json").read_text())
    assert "sdpa_packed" not in json.dumps(saved)  # other tools load the checkpoint as before
