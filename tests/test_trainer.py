"""The loop's numbers: parity with a plain reference loop, and the same update however a step
is split into micro-batches and processes (CPU, fp32, dropout off, the tiny GPT-2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, joker_recipe, read_records
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, get_linear_schedule_with_warmup

from loraft.data import data_roots
from loraft.errors import LoraftError
from loraft.models.loading import with_fast_kernels
from loraft.tasks import build_task
from loraft.tasks.causal_lm import pad_right
from loraft.tokenizer import load_tokenizer
from loraft.trainer import TIMING_KEYS
from loraft.training import train_recipe

STEPS = 5
PARITY = [
    "train.precision=fp32",
    "method=full",
    "train.lr=3e-3",
    "train.warmup_ratio=0.4",
    "train.weight_decay=0.1",
    "train.max_grad_norm=0.5",
    "train.log_every=1",
    f"train.max_steps={STEPS}",
    "train.eval_every=100",
    "eval.at_start=false",
    "data.train_size=64",
]


def train_split(model_dir: Path, run: Path, batch: int, accum: int, *extra: str) -> tuple[list[dict], dict]:
    """Train the parity recipe; (training records, final weights)."""
    recipe = joker_recipe(
        model_dir, run, *PARITY, f"train.batch_size={batch}", f"train.grad_accum={accum}", *extra
    )
    train_recipe(recipe)
    return read_records(run, "train"), load_file(run / "checkpoints" / "last" / "model.safetensors")


def reference_loop(model_dir: Path, run: Path) -> tuple[list[float], list[float], GPT2LMHeadModel]:
    """A plain loop: one padded row per example (loraft packs them into one), transformers' own
    loss (mean over the batch's target tokens), AdamW with no decay on 1-D weights, HF's linear
    schedule, the same 8 examples per step. The model has loraft's one-kernel GELU (the loop is
    under test here; test_model checks the GELU)."""
    recipe = joker_recipe(model_dir, run, *PARITY, "train.batch_size=8")
    task = build_task(recipe, data_roots())
    tokenizer = load_tokenizer(str(model_dir))
    train_rows, _ = task.rows()
    examples = task.with_targets(task.tokenize(train_rows, tokenizer), "training").to_list()
    order = np.random.default_rng([recipe.train.seed, 0]).permutation(len(examples))  # the documented order
    model = with_fast_kernels(GPT2LMHeadModel.from_pretrained(model_dir))
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-3
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(0.4 * STEPS), STEPS)
    losses, rates = [], []
    for step in range(STEPS):
        batch = pad_right([examples[i] for i in order[step * 8 : (step + 1) * 8]], tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        losses.append(loss.item())
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return losses, rates, model


def test_the_loop_equals_a_plain_reference_loop(tiny_model_dir: Path, tmp_path: Path) -> None:
    records, weights = train_split(tiny_model_dir, tmp_path / "run", 8, 1)
    losses, rates, reference = reference_loop(tiny_model_dir, tmp_path / "ref")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records], losses, rtol=1e-6)
    np.testing.assert_allclose([r["lr"] for r in records], rates, rtol=1e-12)
    assert rates[0] == 0 and rates[2] == pytest.approx(3e-3)  # warm-up, then decay
    expected = {name: value for name, value in reference.state_dict().items() if name in weights}
    assert_same_weights(weights, expected, 1e-6)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||: elementwise ratios mean nothing near zero."""
    return float((actual - expected).norm() / expected.norm())


def without_key_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with the attention key bias cut out of `c_attn.bias`.

    Softmax is shift-invariant, so the key bias gets no gradient at all: what reaches it is
    rounding noise, which AdamW divides by its own size into steps of about lr. Two exact
    loops that sum their micro-batches in another order move it differently; nothing else.
    """
    kept = {}
    for name, value in weights.items():
        if name.endswith("attn.c_attn.bias"):
            width = value.shape[0] // 3
            value = torch.cat([value[:width], value[2 * width :]])
        kept[name] = value
    return kept


def assert_same_weights(actual: dict, expected: dict, tolerance: float) -> None:
    actual, expected = without_key_bias(actual), without_key_bias(expected)
    for name, value in expected.items():
        assert relative_error(actual[name], value) < tolerance, name


def test_batch_and_accumulation_splits_give_the_same_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """8 x 1, 4 x 2 and 2 x 4: the same examples per step, every target token weighted alike
    (micro-batches of these rows hold different numbers of target tokens)."""
    results = {
        split: train_split(tiny_model_dir, tmp_path / f"{split}", *split)
        for split in [(8, 1), (4, 2), (2, 4)]
    }
    (base_records, base_weights), *others = results.values()
    for records, weights in others:
        np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in base_records], rtol=1e-5)
        assert_same_weights(weights, base_weights, 1e-5)


def metrics_without_timing(run: Path) -> list[dict]:
    """metrics.jsonl without the fields that vary from run to run (times)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def test_the_same_recipe_twice_writes_the_same_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    def metrics(run: Path) -> list[dict]:
        train_recipe(
            joker_recipe(tiny_model_dir, run, "train.max_steps=6", "train.eval_every=3", "lora.dropout=0.1")
        )
        return metrics_without_timing(run)

    first, second = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert first == second and len(first) == 4  # evals at 0, 3 and 6; the loss at 6 (log_every 10)


@pytest.mark.matrix  # 16 s of two launched processes: in .ci/run, not the README command
def test_two_processes_of_four_equal_one_of_eight(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2` (gloo): one run directory, the same losses and weights."""
    single_records, single_weights = train_split(tiny_model_dir, tmp_path / "one", 8, 1)
    run = tmp_path / "two"
    overrides = [
        f"model.name={tiny_model_dir}",
        f"output_dir={run}",
        "data.max_length=48",
        "eval.generate=false",
        *PARITY,
        "train.batch_size=4",
        "train.save_every=1",  # a training state each step: both processes write into each one
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own: nothing else in the suite may hold 29500
        "--nproc_per_node",
        "2",
        "-m",
        "loraft",
        "train",
        "recipes/joker.yaml",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run directory:") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["num_processes"], summary["distributed_type"]) == (2, "MULTI_CPU")
    records = read_records(run, "train")
    np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in single_records], rtol=1e-5)
    assert_same_weights(load_file(run / "checkpoints" / "last" / "model.safetensors"), single_weights, 1e-5)
    assert (
        summary["train_tokens"] == json.loads((tmp_path / "one" / "summary.json").read_text())["train_tokens"]
    )


def test_epochs_drive_the_step_count_and_the_short_last_window(tiny_model_dir: Path, tmp_path: Path) -> None:
    """60 rows at 8 x 2 per step: 4 steps an epoch, the last one of 12 rows; 1.5 epochs = 6."""
    run = tmp_path / "run"
    summary = train_recipe(
        joker_recipe(
            tiny_model_dir,
            run,
            "data.train_size=60",
            "train.batch_size=8",
            "train.grad_accum=2",
            "train.epochs=1.5",
            "train.log_every=1",
        )
    ).summary
    assert summary["steps"] == 6 and summary["epochs"] == 1.5
    assert [r["epoch"] for r in read_records(run, "train")] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert [r["step"] for r in read_records(run, "eval")] == [0, 4, 6]  # each epoch, and the end


@pytest.mark.parametrize(
    "setting",
    ["train.gradient_checkpointing=true", "train.precision=bf16", "train.save_every=2", "train.grad_accum=3"],
)
def test_settings_that_change_how_a_step_runs_still_train(
    tiny_model_dir: Path, tmp_path: Path, setting: str
) -> None:
    run = tmp_path / "run"
    summary = train_recipe(
        joker_recipe(tiny_model_dir, run, "train.max_steps=4", "train.lr=1e-2", "train.batch_size=4", setting)
    ).summary
    losses = [r["eval_loss"] for r in read_records(run, "eval")]
    assert summary["steps"] == 4 and losses[-1] < losses[0], losses
    if setting == "train.save_every=2":
        states = sorted(p.name for p in (run / "train_state").iterdir())
        assert states == ["step-00000004"]  # keep_last 1: step 2's state made way


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    with pytest.raises(LoraftError, match=r"step \d+: the training (loss|gradient norm) is (nan|inf)"):
        train_recipe(
            joker_recipe(
                tiny_model_dir,
                run,
                "method=full",
                "train.lr=1e6",
                "train.max_steps=40",
                "train.max_grad_norm=null",
                "train.eval_every=1",
            )
        )
    saved = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values()), saved["step"]
    assert not (run / "summary.json").exists()


@pytest.mark.matrix  # 30 s of torch.compile on 2 cores: in .ci/run's matrix, not the README command
def test_compiling_the_model_keeps_the_numbers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """train.compile (torch.compile, inductor): the same losses as eager, to 1e-5."""
    eager, _ = train_split(tiny_model_dir, tmp_path / "eager", 8, 1)
    compiled, _ = train_split(tiny_model_dir, tmp_path / "compiled", 8, 1, "train.compile=true")
    np.testing.assert_allclose([r["loss"] for r in compiled], [r["loss"] for r in eager], rtol=1e-5)


def test_a_bf16_run_computes_its_output_layer_in_bf16(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss (the chunked output layer, outside the model's forward) runs under the run's
    autocast in training steps and evaluations alike; in fp32 nothing is autocast."""
    from loraft import lm_loss

    seen: list[tuple[bool, bool]] = []
    chunked = lm_loss._chunked_losses

    def spy(hidden, weight, targets, *wants):
        seen.append((any(wants), torch.is_autocast_enabled("cpu")))  # wants: gradients (training)
        return chunked(hidden, weight, targets, *wants)

    monkeypatch.setattr(lm_loss, "_chunked_losses", spy)
    for precision in ("bf16", "fp32"):
        seen.clear()
        overrides = ("train.max_steps=2", "train.eval_every=1", f"train.precision={precision}")
        train_recipe(joker_recipe(tiny_model_dir, tmp_path / precision, *overrides))
        assert {training for training, _ in seen} == {True, False}  # steps and evaluations
        assert {autocast for _, autocast in seen} == {precision == "bf16"}, precision


def test_frozen_weights_held_in_bf16_change_no_number(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoRA in bf16: the frozen weights of the matrix products are bf16 during the steps (not
    cast again each step), fp32 and untouched afterwards, and every logged number is what
    autocast gives with fp32 weights."""
    from loraft import training
    from loraft.trainer import Trainer

    dtypes: set[torch.dtype] = set()
    spilled: list[list[str]] = []
    step = Trainer.train_step

    def spy(trainer: Trainer, number: int):
        base = trainer.accelerator.unwrap_model(trainer.model).base_model.model
        dtypes.update({base.transformer.h[0].attn.c_attn.base_layer.weight.dtype, base.lm_head.weight.dtype})
        spilled.append([path.name for path in trainer.recipe.run_dir.glob("frozen-fp32-*.bin")])
        return step(trainer, number)

    overrides = ("train.precision=bf16", "train.max_steps=3", "train.eval_every=2", "train.log_every=1")
    monkeypatch.setattr(Trainer, "train_step", spy)
    held = train_recipe(joker_recipe(tiny_model_dir, tmp_path / "held", *overrides))
    assert dtypes == {torch.bfloat16, torch.float32}  # Conv1D held in bf16; the tied head is not
    # the fp32 values waited in the run folder, not in memory, and the file is gone
    assert spilled == [[f"frozen-fp32-{os.getpid()}.bin"]] * 3
    assert not list((tmp_path / "held").glob("frozen-fp32-*"))
    original = GPT2LMHeadModel.from_pretrained(tiny_model_dir).state_dict()
    for name, value in held.model.base_model.model.state_dict().items():
        if "lora_" not in name and name in original:
            assert value.dtype == torch.float32 and torch.equal(value, original[name]), name
    monkeypatch.setattr(training, "held_dtype", lambda *args: None)  # autocast casts each step
    train_recipe(joker_recipe(tiny_model_dir, tmp_path / "cast", *overrides))
    assert metrics_without_timing(tmp_path / "held") == metrics_without_timing(tmp_path / "cast")


def test_frozen_weights_stay_in_memory_when_the_disk_cannot_take_them(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A full disk costs memory, not the run; a killed run's leftover file goes on resume."""
    from loraft.models import loading

    overrides = ("train.precision=bf16", "train.max_steps=2", "train.save_every=1", "train.log_every=1")
    with monkeypatch.context() as patch:  # a folder that is not there refuses the file as a full disk would
        patch.setattr(loading, "SPILL_PATTERN", "not-there/frozen-fp32-*.bin")
        held = train_recipe(joker_recipe(tiny_model_dir, tmp_path / "run", *overrides))
    assert (
        "cannot hold the frozen fp32 weights on disk (No such file or directory); kept in memory"
        in capsys.readouterr().out
    )
    original = GPT2LMHeadModel.from_pretrained(tiny_model_dir).state_dict()
    restored = held.model.base_model.model.state_dict()
    assert torch.equal(
        restored["transformer.h.0.attn.c_attn.base_layer.weight"],
        original["transformer.h.0.attn.c_attn.weight"],
    )
    assert not list((tmp_path / "run").glob("frozen-fp32-*"))
    (tmp_path / "run" / "frozen-fp32-99999.bin").write_bytes(b"left by kill -9")
    (tmp_path / "run" / "summary.json").unlink()
    train_recipe(
        joker_recipe(tiny_model_dir, tmp_path / "run", *overrides, "train.max_steps=3", "train.resume=auto")
    )
    assert not list((tmp_path / "run").glob("frozen-fp32-*"))
