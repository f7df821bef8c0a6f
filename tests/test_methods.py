"""The LoRA variants (rsLoRA, DoRA, LoRA+) get what plain LoRA has: PEFT's counts, a falling
loss, exports that reload to the trained logits, an exact resume, and labels that say them.
On GPT-2 in the default suite, on Llama too with `-m matrix` (as `.ci/run` runs it)."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_records
from peft import PeftModel
from test_families import case_recipe, logits_of, train_losses, trainable_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraft.errors import LoraftError
from loraft.evaluation import evaluate_run
from loraft.export import export_run
from loraft.methods import METHODS
from loraft.models.loading import count_parameters
from loraft.trainer import Trainer
from loraft.training import TrainResult, train_recipe

VARIANTS = {  # name -> (method, its settings)
    "rslora": ("lora", ["lora.use_rslora=true"]),
    "dora": ("lora", ["lora.use_dora=true"]),
    "lora+": ("lora", ["lora.plus_lr_ratio=16"]),
    "ia3": ("ia3", ["train.lr=3e-2"]),  # PEFT's default targets for the family
    "pissa": ("lora", ["lora.init=pissa_niter_4", "lora.dropout=0"]),  # saved converted for the base
    "olora": ("lora", ["lora.init=olora"]),
    "vera": ("vera", ["vera.r=16", "train.lr=3e-2"]),
    # ranks pruned from step 2 on (4 -> 2 a layer), fixed for the last step
    "prompt_tuning": ("prompt_tuning", ["prompt_tuning.num_virtual_tokens=4", "train.lr=3e-2"]),
    "adalora": ("adalora", ["adalora.init_r=4", "adalora.target_r=2", "adalora.tinit=1", "adalora.tfinal=1"]),
}
ON_GPT2 = [variant for variant in VARIANTS if variant != "olora"]


@pytest.mark.parametrize(
    ("family", "variant"),
    [
        *(("gpt2", variant) for variant in ON_GPT2),
        *(pytest.param("llama", variant, marks=pytest.mark.matrix) for variant in ON_GPT2),
        ("llama", "olora"),
    ],
)
def test_each_variant_trains_exports_and_resumes(
    variant: str, family: str, family_dirs: dict, tmp_path: Path, monkeypatch
) -> None:
    model_dir = family_dirs[family]
    method, settings = VARIANTS[variant]
    settings = ["train.lr=5e-3", *settings]

    def recipe(run: str, *more: str):
        return case_recipe(model_dir, tmp_path / run, "causal_lm", method, True, tmp_path, *settings, *more)

    result = train_recipe(recipe("whole"))
    losses = train_losses(tmp_path / "whole")
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert count_parameters(result.model) == result.model.get_nb_trainable_parameters()  # PEFT's count

    recorded = result.summary["final_eval"]["eval_loss"]  # `loraft eval` computes it again
    assert evaluate_run(tmp_path / "whole", checkpoint="last")["eval_loss"] == pytest.approx(
        recorded, rel=1e-6
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "whole" / "checkpoints" / "last")
    expected = logits_of(result.model, tokenizer)
    if METHODS[method].merge_refusal:
        with pytest.raises(LoraftError, match="^export --merge: "):
            export_run(tmp_path / "whole", tmp_path / "merged", merge=True, checkpoint="last")
        assert not (tmp_path / "merged").exists()
    else:
        merged = export_run(tmp_path / "whole", tmp_path / "merged", merge=True, checkpoint="last")
        torch.testing.assert_close(
            logits_of(AutoModelForCausalLM.from_pretrained(merged), tokenizer), expected, rtol=1e-5, atol=1e-5
        )
    adapter = export_run(tmp_path / "whole", tmp_path / "adapter", checkpoint="last")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    torch.testing.assert_close(logits_of(reloaded, tokenizer), expected, rtol=1e-5, atol=1e-5)

    resumed = crash_after_step_3_then_resume(
        monkeypatch, lambda *more: train_recipe(recipe("crashed", *more))
    )
    np.testing.assert_allclose(train_losses(tmp_path / "crashed"), losses, rtol=1e-6)
    for name, weight in trainable_weights(resumed.model).items():
        torch.testing.assert_close(weight, trainable_weights(result.model)[name], rtol=1e-5, atol=1e-6)


@pytest.mark.matrix
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("variant", ON_GPT2)
def test_each_variant_splits_and_packs_alike(
    variant: str, family: str, family_dirs: dict, tmp_path: Path
) -> None:
    """Batch 8 x 1, 4 x 2 and padded rows instead of packed ones: the same losses."""
    method, settings = VARIANTS[variant]

    def losses_of(run: str, *more: str) -> list[float]:
        train_recipe(
            quick_recipe(family_dirs[family], tmp_path / run, method, "train.lr=5e-3", *settings, *more)
        )
        return train_losses(tmp_path / run)

    whole = losses_of("whole")
    np.testing.assert_allclose(
        losses_of("split", "train.batch_size=4", "train.grad_accum=2"), whole, rtol=1e-5
    )
    np.testing.assert_allclose(losses_of("padded", "data.packing=false"), whole, rtol=1e-5)


def crash_after_step_3_then_resume(monkeypatch, train: Callable[..., TrainResult]) -> TrainResult:
    """`train()` stopped dead after step 3 (its last state is step 2's), then `train(resume)`."""
    real_step = Trainer.train_step

    def crash_after_step_3(self, step):
        outcome = real_step(self, step)
        if step == 3:
            raise KeyboardInterrupt  # as a kill would: no state saved for step 3
        return outcome

    monkeypatch.setattr(Trainer, "train_step", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    return train("train.resume=true")


@pytest.mark.matrix
@pytest.mark.parametrize("variant", ON_GPT2)
def test_each_variant_resumes_after_sigkill_as_if_never_killed(
    variant: str, family_dirs: dict, tmp_path: Path
) -> None:
    """A real `loraft train` process killed mid-run (SIGKILL: nothing runs on the way out)."""
    from test_resume import losses, start, wait_for_step

    from loraft.recipe_files import load_recipe

    method, settings = VARIANTS[variant]
    longer = ["train.max_steps=40", "train.save_every=5", "train.eval_every=40", "train.lr=5e-3", *settings]
    for run in ("whole", "killed"):
        recipe = quick_recipe(family_dirs["gpt2"], tmp_path / run, method, *longer)
        (tmp_path / f"{run}.yaml").write_text(recipe.to_yaml())
    train_recipe(load_recipe(tmp_path / "whole.yaml"))
    process = start([str(tmp_path / "killed.yaml")])
    wait_for_step(tmp_path / "killed", 8, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    train_recipe(load_recipe(tmp_path / "killed.yaml", ["train.resume=true"]))
    expected, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 41))
    np.testing.assert_allclose([resumed[step] for step in expected], list(expected.values()), rtol=1e-6)


def quick_recipe(model_dir: Path, tmp_path: Path, method: str, *overrides: str):
    """The matrix's quick causal-LM recipe (packed) of `method` on `model_dir`."""
    return case_recipe(model_dir, tmp_path, "causal_lm", method, True, tmp_path, *overrides)


def test_rslora_scales_by_the_square_root_of_the_rank(family_dirs: dict, tmp_path: Path) -> None:
    from loraft.methods import apply_method

    for rslora, scale in ((False, 16 / 4), (True, 16 / math.sqrt(4))):
        recipe = quick_recipe(
            family_dirs["gpt2"],
            tmp_path,
            "lora",
            "lora.r=4",
            "lora.alpha=16",
            f"lora.use_rslora={str(rslora).lower()}",
        )
        model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["gpt2"]), recipe, "causal_lm")
        layer = model.base_model.model.transformer.h[0].attn.c_attn
        assert layer.scaling["default"] == pytest.approx(scale)


def test_lora_plus_gives_the_b_matrices_ratio_times_the_rate(family_dirs: dict, tmp_path: Path) -> None:
    from loraft.methods import apply_method

    recipe = quick_recipe(
        family_dirs["llama"],
        tmp_path,
        "lora",
        "lora.plus_lr_ratio=16",
        "train.lr=1e-3",
    )
    model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["llama"]), recipe, "causal_lm")
    optimizer = METHODS["lora"].optimizer(model, recipe)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            assert rates[id(parameter)] == pytest.approx(16e-3), name
        elif "lora_A" in name:
            assert rates[id(parameter)] == pytest.approx(1e-3), name


def test_ia3_counts_as_peft_does_with_its_gpt2_defaults(family_dirs: dict, tmp_path: Path) -> None:
    """c_attn's output and the MLP's c_proj input are scaled: 2,304 + 3,072 a block in GPT-2
    small, 64 x 3 + 256 a block here (the MLP's input width is 4 x 64)."""
    from loraft.methods import apply_method

    recipe = quick_recipe(family_dirs["gpt2"], tmp_path, "ia3")
    model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["gpt2"]), recipe, "causal_lm")
    assert model.get_nb_trainable_parameters()[0] == 2 * (3 * 64 + 4 * 64)
    assert model.peft_config["default"].feedforward_modules == {
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_proj",
    }


def test_labels_say_the_variant(tmp_path: Path, family_dirs: dict) -> None:
    lora = METHODS["lora"]
    dora = quick_recipe(family_dirs["gpt2"], tmp_path, "lora", "lora.use_dora=true")
    assert lora.label(dora) == "dora r=4 all-linear"
    both = quick_recipe(
        family_dirs["gpt2"],
        tmp_path,
        "lora",
        "lora.use_rslora=true",
        "lora.plus_lr_ratio=16",
    )
    assert lora.label(both) == "rslora r=4 all-linear lora+16"
    pissa = quick_recipe(family_dirs["gpt2"], tmp_path, "lora", "lora.init=pissa_niter_4")
    assert lora.label(pissa) == "lora r=4 all-linear pissa_niter_4"
    assert lora.frontier_line(pissa) == "lora all-linear pissa_niter_4"


def test_olora_on_gpt2s_conv1d_is_refused_in_one_line(family_dirs: dict, tmp_path: Path, loraft) -> None:
    recipe = quick_recipe(family_dirs["gpt2"], tmp_path, "lora")
    path = tmp_path / "olora.yaml"
    path.write_text(recipe.to_yaml())
    code, out, err = loraft("validate", "--no-data", str(path), "lora.init=olora")
    assert code == 2 and err.strip().splitlines() == [
        f"error: {path}: lora.init: olora cannot start on layers stored transposed (GPT-2's Conv1D: "
        "PEFT's OLoRA gives A and B the wrong shapes there); use pissa, or a family with nn.Linear layers"
    ]


def test_a_pissa_checkpoint_is_a_plain_lora_adapter_of_twice_the_rank(
    family_dirs: dict, tmp_path: Path
) -> None:
    """It applies to the original base (the logits are checked in the matrix test above)."""
    import json

    recipe = quick_recipe(
        family_dirs["gpt2"], tmp_path / "run", "lora", "lora.init=pissa", "train.max_steps=2"
    )
    result = train_recipe(recipe)
    config = json.loads((tmp_path / "run" / "checkpoints" / "last" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (
        8,
        2 * recipe.lora.alpha,
        True,
    )
    assert result.model.peft_config["default"].r == 4  # the trained model keeps its rank


def adalora_recipe(family_dirs: dict, tmp_path: Path, *overrides: str):
    return quick_recipe(
        family_dirs["gpt2"],
        tmp_path / "adalora",
        "adalora",
        "adalora.init_r=4",
        "adalora.target_r=2",
        "adalora.tinit=2",
        "adalora.tfinal=2",
        "train.max_steps=8",
        "train.save_every=8",
        "train.eval_every=8",
        *overrides,
    )


def test_adaloras_regulariser_is_pefts_and_in_every_steps_loss(
    family_dirs: dict, tmp_path: Path, monkeypatch
) -> None:
    """The penalty equals what PEFT adds to a returned `.loss`, and the trainer backpropagates
    the token loss plus it, once a step."""
    from accelerate import Accelerator

    from loraft.methods import apply_method

    recipe = adalora_recipe(family_dirs, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(family_dirs["gpt2"])
    ids = tokenizer(["Why so serious?"], return_tensors="pt")["input_ids"]
    model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["gpt2"]), recipe, "causal_lm")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.3)  # away from orthogonal: a penalty well above zero
        with_penalty = model(input_ids=ids, labels=ids).loss
        model.peft_config["default"].orth_reg_weight = 0.0
        without = model(input_ids=ids, labels=ids).loss
        model.peft_config["default"].orth_reg_weight = 0.5
        penalty = METHODS["adalora"].regulariser(model)
    assert float(penalty) > 0.1
    torch.testing.assert_close(penalty, with_penalty - without)

    backpropagated = []
    real_backward = Accelerator.backward

    def recording_backward(self, loss, **kwargs):
        backpropagated.append(float(loss.detach()))
        return real_backward(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    train_recipe(adalora_recipe(family_dirs, tmp_path, "train.batch_size=4", "train.grad_accum=2"))
    records = read_records(tmp_path / "adalora", "train")
    assert len(backpropagated) == 2 * len(records) == 16  # two micro-batches a step
    for step, record in enumerate(records):
        first, second = backpropagated[2 * step : 2 * step + 2]
        assert record["regulariser"] > 0
        assert first + second == pytest.approx(record["loss"] + record["regulariser"], rel=1e-5)


def test_adaloras_rank_budget_shrinks_on_its_schedule(family_dirs: dict, tmp_path: Path) -> None:
    """2 layers of rank 4 (8) pruned by the cubic schedule after tinit to 2 each (4), fixed for
    the last tfinal steps; the checkpoint keeps only the ranks left."""
    import json

    from safetensors.torch import load_file

    result = train_recipe(adalora_recipe(family_dirs, tmp_path))
    budgets = [record["rank_budget"] for record in read_records(tmp_path / "adalora", "train")]
    schedule = result.model.base_model.rankallocator.budget_schedule
    assert budgets == [schedule(step)[0] for step in range(1, 9)]
    assert budgets[0] == 8 and budgets[2] < 8 and budgets[-3:] == [4, 4, 4]
    last = tmp_path / "adalora" / "checkpoints" / "last"
    pattern = json.loads((last / "adapter_config.json").read_text())["rank_pattern"]
    assert sum(sum(kept) for kept in pattern.values()) == 4
    ranks = [t.shape[0] for k, t in load_file(last / "adapter_model.safetensors").items() if "lora_A" in k]
    assert sum(ranks) == 4


def test_prompt_tunings_loss_is_pefts_on_the_rows_own_tokens(family_dirs: dict, tmp_path: Path) -> None:
    """The virtual tokens come first in the outputs: loraft's token loss, read from the last
    positions, equals PEFT's own `.loss` (which prefixes the labels with ignored ones) on the
    targets a run without them has (a row's first token is predicted by nothing there)."""
    from loraft.methods import apply_method
    from loraft.tasks.causal_lm import pad_right, token_loss_sum

    recipe = quick_recipe(family_dirs["llama"], tmp_path, "prompt_tuning", "prompt_tuning.init=sample_vocab")
    model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["llama"]), recipe, "causal_lm")
    tokenizer = AutoTokenizer.from_pretrained(family_dirs["llama"])
    rows = [tokenizer("Why so serious?")["input_ids"], tokenizer("a b c d e f g h")["input_ids"]]
    batch = pad_right([{"input_ids": ids} for ids in rows], tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        ours = token_loss_sum(model, batch) / (batch["labels"][:, 1:] != -100).sum()
        labels = batch["labels"].clone()
        labels[:, 0] = -100
        peft = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    torch.testing.assert_close(ours, peft.loss, rtol=1e-6, atol=1e-6)


def test_prompt_tuning_trains_unpacked_saying_so_and_refuses_what_it_cannot(
    family_dirs: dict, tmp_path: Path, loraft, capsys
) -> None:
    recipe = quick_recipe(
        family_dirs["gpt2"], tmp_path / "run", "prompt_tuning", "train.max_steps=1", "data.packing=true"
    )
    train_recipe(recipe)
    assert (
        "data.packing: prompt tuning puts its virtual tokens before each row, and a packed row holds "
        "several; training on padded rows instead (data.packing=false)"
    ) in capsys.readouterr().out
    code, out, err = loraft("export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--merge")
    assert code == 2 and err.strip().splitlines() == [
        "error: export --merge: prompt tuning adds virtual tokens, not weights: there is nothing to fold "
        "into the model; export the adapter (without --merge)"
    ]
    assert not (tmp_path / "merged").exists()
    prompt = ["--prompt", "Why so serious?", "--max-new-tokens", "4"]
    code, out, err = loraft("generate", str(tmp_path / "run"), *prompt)
    assert code == 0 and out.startswith("Why so serious?")  # PEFT's generate puts the tokens first
    code, out, err = loraft("generate", str(tmp_path / "run"), *prompt, "--context-window", "4")
    assert code == 2 and err.strip().splitlines() == [
        "error: generation.context_window: the shortened-context decoder cannot carry prompt "
        "tuning's virtual tokens; generate without a context window"
    ]
    code, out, err = loraft("validate", "--no-data", "recipes/sst-lora.yaml", "method=prompt_tuning")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is for tasks that generate text" in err


def test_an_adalora_schedule_longer_than_the_run_is_one_line_before_any_folder(
    family_dirs: dict, tmp_path: Path, loraft
) -> None:
    recipe = adalora_recipe(family_dirs, tmp_path, "adalora.tinit=5", "adalora.tfinal=5", "train.max_steps=4")
    path = tmp_path / "adalora.yaml"
    path.write_text(recipe.to_yaml())
    code, out, err = loraft("train", str(path))
    assert code == 2 and err.strip().splitlines() == [
        "error: adalora: tinit (5) + tfinal (5) leave none of this run's 4 steps to prune ranks in; "
        "lower them, or train longer"
    ]
    assert not (tmp_path / "adalora").exists()  # a corrected recipe starts without --overwrite


@pytest.mark.parametrize("damage_name", ["scores", "pattern", "file"])
def test_a_damaged_adalora_state_is_one_line_on_resume(
    damage_name: str, family_dirs: dict, tmp_path: Path, monkeypatch
) -> None:
    """A state folder may come from someone else: its scores and rank pattern are checked
    against the model before anything is restored."""
    import json

    from safetensors.torch import load_file, save_file

    from loraft.training_state import METHOD_FILE, TRAINER_STATE, saved_states

    def damage(state: Path) -> None:
        if damage_name == "scores":
            scores = load_file(state / METHOD_FILE)
            scores[next(iter(scores))] = torch.zeros(3, 3)
            save_file(scores, state / METHOD_FILE)
        elif damage_name == "pattern":
            counters = json.loads((state / TRAINER_STATE).read_text())
            counters["method_state"]["rank_pattern"] = {"transformer.h.0.attn.c_attn.lora_E": [True]}
            (state / TRAINER_STATE).write_text(json.dumps(counters))
        else:
            (state / METHOD_FILE).write_bytes(b"not a safetensors file")

    def train(*more: str):
        if more:  # the resume: after the crash, the newest state is damaged
            damage(saved_states(tmp_path / "adalora" / "train_state")[-1])
        return train_recipe(adalora_recipe(family_dirs, tmp_path, "train.save_every=2", *more))

    with pytest.raises(LoraftError) as error:
        crash_after_step_3_then_resume(monkeypatch, train)
    state = saved_states(tmp_path / "adalora" / "train_state")[-1]
    message = str(error.value)
    assert "\n" not in message and str(state) in message and message.count("resume from an earlier") == 1, (
        message
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["method=adalora", "adalora.target_r=12"], "target_r (12) must be less than init_r (12)"),
        (["model.quantize=4bit", "lora.init=pissa"], "lora.init: pissa rewrites the base weights"),
        (
            ["method=prompt_tuning", "generation.context_window=16"],
            "the shortened-context decoder cannot carry prompt tuning's virtual tokens",
        ),
        (
            ["method=prompt_tuning", "data.max_length=1020"],
            "data.max_length: 1020 is longer than the model's context (1024 positions after 20 virtual "
            "tokens); use data.max_length=1004 or less",
        ),
    ],
)
def test_settings_a_method_cannot_run_are_one_line_in_validate(
    overrides: list[str], expected: str, loraft
) -> None:
    code, out, err = loraft("validate", "--no-data", "recipes/joker.yaml", *overrides)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_a_prompt_tuned_model_answers_a_prompt_alike_alone_or_in_a_batch(
    family_dirs: dict, tmp_path: Path
) -> None:
    from loraft.generation import generate
    from loraft.methods import apply_method
    from loraft.recipe import GenerationSection

    recipe = quick_recipe(family_dirs["gpt2"], tmp_path, "prompt_tuning", "prompt_tuning.init=sample_vocab")
    model = apply_method(AutoModelForCausalLM.from_pretrained(family_dirs["gpt2"]), recipe, "causal_lm")
    tokenizer = AutoTokenizer.from_pretrained(family_dirs["gpt2"])
    settings = GenerationSection(strategy="greedy", max_new_tokens=6, batch_size=2)
    alone = generate(model, tokenizer, ["Why?"], settings)
    assert generate(model, tokenizer, ["Why?", "Why so serious, tell me, why?"], settings)[0] == alone[0]
