"""One training loop for every task, on `accelerate` (CPU, one GPU, DDP, FSDP, DeepSpeed).

`train_recipe` wires recipe -> data -> model -> loop -> run directory. The loop is AdamW with
linear warm-up and decay, gradient accumulation and clipping, mixed precision, periodic
evaluation, and best/last checkpoints.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from loraft.checkpoint import load_checkpoint, save_base_model, save_checkpoint
from loraft.data import data_roots
from loraft.errors import LoraftError
from loraft.model import build_model, build_tokenizer, count_parameters, describe_parameters
from loraft.recipe import Recipe
from loraft.run_dir import RunDirectory
from loraft.system import environment_facts, peak_memory_mb
from loraft.tasks import build_task
from loraft.tasks.base import Task


@dataclass
class TrainResult:
    """What `train_recipe` hands back: the summary and the trained model with its tokenizer."""

    summary: dict
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    is_main_process: bool = True  # under DDP, only the main process reports


@dataclass
class Progress:
    """Counters of the loop; `train_s` excludes start-up, evaluation and saving."""

    step: int = 0
    train_tokens: int = 0
    train_s: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    best_eval: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)


def train_recipe(recipe: Recipe, data_root: str | Path | None = None, overwrite: bool = False) -> TrainResult:
    """Run a recipe end to end; the summary is also written to the run's summary.json."""
    started = time.perf_counter()
    require_tracker(recipe.train.tracker)
    accelerator = Accelerator(
        cpu=multi_process_cpu(),
        mixed_precision="no" if recipe.train.precision == "fp32" else recipe.train.precision,
        gradient_accumulation_steps=recipe.train.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=None if recipe.train.tracker == "none" else recipe.train.tracker,
        project_dir=str(recipe.run_dir),
    )
    RunDirectory.check_available(recipe.run_dir, overwrite)  # before minutes of loading
    set_seed(recipe.train.seed)

    task = build_task(recipe, data_roots(data_root))
    train_rows, eval_rows = task.rows()
    tokenizer = build_tokenizer(recipe, task.texts_for_tokenizer(train_rows))
    model = build_model(recipe, task.kind, tokenizer, **task.model_options())
    check_context(recipe, model)
    loop = TrainingLoop(recipe, task, tokenizer, accelerator)
    # Everything is validated: only now is an earlier run (with --overwrite) replaced.
    run = RunDirectory.create(recipe.run_dir, overwrite) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    loop.run = run
    trainable, total = count_parameters(model)
    accelerator.print(describe_parameters(trainable, total))
    warn_about_slow_precision(recipe.train.precision, accelerator)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if run is not None:
        run.write_recipe(recipe)
        if recipe.model.config is not None and recipe.method != "full":
            save_base_model(run, model)

    train_set, eval_set = task.tokenize(train_rows, tokenizer), task.tokenize(eval_rows, tokenizer)
    progress = loop.fit(model, train_set, eval_set)
    best_extra = {}
    if accelerator.is_main_process and progress.best_step is not None:
        # Generation scores and prediction files come from the best checkpoint, as
        # `loraft eval` (best by default) reproduces them.
        best_model, _ = load_checkpoint(run, "best", recipe, task.kind, **task.model_options())
        best_extra = task.final_evaluation(best_model.to(accelerator.device), tokenizer, recipe.run_dir)
    summary = {
        **describe_run(recipe, trainable, total, len(train_rows), len(eval_rows)),
        **describe_progress(progress),
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "wall_s": time.perf_counter() - started,
        "best_metric": loop.metric,
        "best_eval": {**progress.best_eval, **best_extra},
        **environment_facts(accelerator, recipe.train.precision),
    }
    if run is not None:
        run.write_summary(summary)
    accelerator.end_training()
    return TrainResult(summary, accelerator.unwrap_model(model), tokenizer, accelerator.is_main_process)


def describe_run(recipe: Recipe, trainable: int, total: int, train_rows: int, eval_rows: int) -> dict:
    """The summary's identity and parameter accounting."""
    return {
        "name": recipe.name,
        "run_dir": str(recipe.run_dir),
        "task": recipe.task,
        "method": recipe.method,
        "model": recipe.model.name or "scratch",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "train_examples": train_rows,
        "eval_examples": eval_rows,
    }


def describe_progress(progress: Progress) -> dict:
    """The summary's training figures: tokens/s counts non-padding tokens of training steps."""
    return {
        "steps": progress.step,
        "train_tokens": progress.train_tokens,
        "train_s": progress.train_s,
        "train_tokens_per_s": progress.train_tokens / max(progress.train_s, 1e-9),
        "final_eval": progress.last_eval,
        "best_step": progress.best_step,
    }


def check_context(recipe: Recipe, model: torch.nn.Module) -> None:
    """Examples longer than the model's positions would index past its position table."""
    context = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    if context and recipe.data.max_length > context:
        raise LoraftError(
            f"data.max_length: {recipe.data.max_length} is longer than the model's context "
            f"({context} positions); use data.max_length={context} or less"
        )


def require_tracker(tracker: str) -> None:
    """An extra logger must be installed before anything runs (it is an optional extra)."""
    module = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(tracker)
    if module and importlib.util.find_spec(module) is None:
        raise LoraftError(f"train.tracker: {tracker} is not installed; pip install 'loraft[{tracker}]'")


def warn_about_slow_precision(precision: str, accelerator: Accelerator) -> None:
    """bf16/fp16 on a CPU without native support is emulated: often 10x slower than fp32."""
    capability = torch.backends.cpu.get_cpu_capability()
    if accelerator.device.type == "cpu" and precision != "fp32" and "AVX512" not in capability:
        accelerator.print(
            f"warning: train.precision={precision} on a CPU with {capability} only (no native "
            "16-bit matmul): expect it to be much slower than fp32"
        )


def multi_process_cpu() -> bool:
    """True under `torchrun` without GPUs: accelerate then needs cpu=True to use gloo DDP."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


class TrainingLoop:
    """The loop itself: `fit` trains a prepared model and returns its progress counters."""

    def __init__(
        self,
        recipe: Recipe,
        task: Task,
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        run: RunDirectory | None = None,
    ) -> None:
        self.recipe, self.task, self.tokenizer = recipe, task, tokenizer
        self.accelerator, self.run = accelerator, run
        self.metric = recipe.eval.metric or task.default_metric
        if self.metric not in task.metric_names:
            choices = ", ".join(task.metric_names)
            raise LoraftError(f"eval.metric: '{self.metric}' is not computed by this task; use {choices}")
        self.greater_is_better = not self.metric.endswith(("loss", "perplexity"))

    def fit(self, model: torch.nn.Module, train_set, eval_set) -> Progress:
        """Train for `max_steps` (or `epochs`), evaluating and checkpointing along the way."""
        train_cfg = self.recipe.train
        train_loader = self._loader(train_set, train_cfg.batch_size, shuffle=True)
        eval_loader = self._loader(eval_set, train_cfg.eval_batch_size or train_cfg.batch_size)
        optimizer = torch.optim.AdamW(parameter_groups(model, train_cfg.weight_decay), lr=train_cfg.lr)
        model, optimizer, train_loader, self.eval_loader = self.accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        steps_per_epoch = max(1, math.ceil(len(train_loader) / train_cfg.grad_accum))
        self.total_steps = train_cfg.max_steps or math.ceil(train_cfg.epochs * steps_per_epoch)
        self.eval_every = train_cfg.eval_every or steps_per_epoch
        # Stepped by hand once per optimizer step (not prepared by accelerate), so the
        # schedule is the same on one process or many.
        self.scheduler = get_linear_schedule_with_warmup(
            optimizer, round(train_cfg.warmup_ratio * self.total_steps), self.total_steps
        )
        self.accelerator.init_trackers(self.recipe.name, config=self.recipe.model_dump(mode="json"))
        self.bar = tqdm(
            total=self.total_steps,
            desc=self.recipe.name,
            disable=not self.accelerator.is_main_process,
        )
        progress, window, epoch = Progress(), _LossWindow(), 0
        if self.recipe.eval.at_start:
            self._evaluate(model, progress, keep_best=False)
        while progress.step < self.total_steps:
            if hasattr(train_loader, "set_epoch"):  # reshuffle each epoch, reproducibly
                train_loader.set_epoch(epoch)
            model.train()
            tick = time.perf_counter()
            for batch in train_loader:
                window.add(self._micro_step(model, optimizer, batch), batch["attention_mask"])
                if not self.accelerator.sync_gradients:
                    continue
                progress.step += 1
                progress.train_s += time.perf_counter() - tick
                progress.train_tokens += window.take_step_tokens()
                self._after_step(model, progress, window, epoch)
                if progress.step >= self.total_steps:
                    break
                model.train()
                tick = time.perf_counter()
            epoch += 1
        self.bar.close()
        if progress.last_eval.get("step") != progress.step:
            self._evaluate(model, progress)
        self._save(model, "last", progress)
        tokens = torch.tensor(progress.train_tokens, device=self.accelerator.device)
        progress.train_tokens = int(self.accelerator.reduce(tokens, "sum"))
        return progress

    def _micro_step(self, model, optimizer, batch) -> float:
        with self.accelerator.accumulate(model):
            loss = self.task.loss(model, batch)
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.recipe.train.max_grad_norm:
                self.accelerator.clip_grad_norm_(model.parameters(), self.recipe.train.max_grad_norm)
            optimizer.step()
            if self.accelerator.sync_gradients:
                self.scheduler.step()
            optimizer.zero_grad()
        return loss.detach().float().item()

    def _after_step(self, model, progress: Progress, window: _LossWindow, epoch: int) -> None:
        """Progress bar, metric logging, periodic evaluation and checkpoints after a step."""
        rate = progress.train_tokens / max(progress.train_s, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{window.mean():.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
        last = progress.step == self.total_steps
        if progress.step % self.recipe.train.log_every == 0 or last:
            record = {"step": progress.step, "epoch": epoch, "loss": window.mean(), "lr": lr}
            self._log({**record, "tokens_per_s": rate})
            window.reset()
        if progress.step % self.eval_every == 0 and not last:
            self._evaluate(model, progress)
        save_every = self.recipe.train.save_every
        if save_every and progress.step % save_every == 0 and not last:
            self._save(model, "last", progress)

    def _evaluate(self, model, progress: Progress, keep_best: bool = True) -> None:
        model.eval()
        with torch.inference_mode():
            metrics = self.task.evaluate(model, self.eval_loader, self.accelerator)
        metrics = {"step": progress.step, **metrics}
        progress.last_eval = metrics
        self._log(metrics)
        if self.accelerator.is_main_process:
            tqdm.write(_format_eval(metrics))
        if not keep_best:
            return
        value = metrics[self.metric]
        better = value == value and (
            progress.best_value is None
            or (value > progress.best_value if self.greater_is_better else value < progress.best_value)
        )  # NaN (value != value) is never the best
        if better:
            progress.best_value, progress.best_step, progress.best_eval = (
                value,
                progress.step,
                metrics,
            )
            self._save(model, "best", progress)

    def _save(self, model, name: str, progress: Progress) -> None:
        self.accelerator.wait_for_everyone()
        if self.run is None:
            return
        state = {"step": progress.step, "eval": progress.last_eval}
        unwrapped = self.accelerator.unwrap_model(model)
        save_checkpoint(self.run.checkpoint(name), unwrapped, self.tokenizer, self.recipe, state)

    def _log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(scalars, step=record["step"])  # trackers take scalars only

    def _loader(self, dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda features: self.task.collate(features, self.tokenizer),
        )


class _LossWindow:
    """Mean training loss since the last log line, and tokens since the last step."""

    def __init__(self) -> None:
        self.total, self.count, self.tokens_since_step = 0.0, 0, 0

    def add(self, loss: float, attention_mask: torch.Tensor) -> None:
        self.total, self.count = self.total + loss, self.count + 1
        self.tokens_since_step += int(attention_mask.sum())  # non-padding tokens only

    def take_step_tokens(self) -> int:
        tokens, self.tokens_since_step = self.tokens_since_step, 0
        return tokens

    def mean(self) -> float:
        return self.total / max(self.count, 1)

    def reset(self) -> None:
        self.total, self.count = 0.0, 0


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (1-D tensors)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _format_eval(metrics: dict) -> str:
    shown = [
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if not isinstance(v, (list, dict))
    ]
    return "eval " + " ".join(shown)
