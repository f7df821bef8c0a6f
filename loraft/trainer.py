"""The training loop: one for every task, on `accelerate` (CPU, one GPU, DDP, FSDP, DeepSpeed).

`Trainer.train_step` is the whole arithmetic of one optimizer step:

    targets = target tokens of the whole step, on every process   (one all-reduce)
    for each of this process's micro-batches:
        loss_sum = sum of its token losses                         (task.loss_sum)
        backward(loss_sum * world_size / targets)
    clip the gradient norm; optimizer step; schedule step; zero the gradients

Every target token of an optimizer step weighs the same, whichever micro-batch or process it
landed in, so batch 8 x accumulation 1, 4 x 2 and two processes of 4 make the same update and
log the same loss (DDP averages gradients over processes, hence `* world_size`). This is what
transformers' Trainer does with `num_items_in_batch` and torchtune with `scale_grads`. For
classification a target is an example. The logged `loss` is the same token-weighted mean, so
it compares with `eval_loss`; `lr` is the rate the step used.

`fit` runs the steps, evaluates every `train.eval_every` steps, and saves `checkpoints/best`,
`checkpoints/last` and the training state (for --resume) as the recipe asks.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from loraft.batches import DataOrder, MicroBatch
from loraft.checkpoint import save_checkpoint
from loraft.errors import LoraftError, unwritable
from loraft.methods import method_of
from loraft.recipe import Recipe
from loraft.run_dir import RunDirectory
from loraft.system import peak_memory_mb
from loraft.tasks.base import IGNORE_INDEX, Batch, Task
from loraft.trackers import Trackers
from loraft.training_state import save_training_state

TIMING_KEYS = ("tokens_per_s", "seconds")  # the only fields of metrics.jsonl that vary run to run


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the run after saving; the message says how to resume.
    A BaseException, like KeyboardInterrupt: no library's `except Exception` swallows it."""


@dataclass
class Progress:
    """Counters behind metrics.jsonl and summary.json, saved with every training state."""

    step: int = 0
    train_tokens: int = 0  # non-padding tokens of training steps, all processes
    train_s: float = 0.0  # time inside training steps (not evaluation or saving)
    eval_s: float = 0.0
    save_s: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    best_eval: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    window_loss: float = 0.0  # summed token losses since the last log line
    window_targets: float = 0.0
    saved_step: int = 0  # the step of the newest training state
    wall_s: float = 0.0  # this run's wall-clock time, every session of it
    peak_memory_mb: float = 0.0


@dataclass
class StepResult:
    loss_sum: float  # all processes
    targets: float
    tokens: float
    lr: float
    grad_norm: float | None
    facts: dict[str, float] = field(default_factory=dict)  # the method's (AdaLoRA's rank budget)


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary; a second Ctrl-C stops now."""

    def __init__(self) -> None:
        self.requested = False
        self.at_once: str | None = None  # set after the last step: stop now, with this message
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no stops
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def stop_at_once(self, message: str) -> None:
        """From now on (no step left to finish) a stop raises at once; one asked for during the
        last step stops here."""
        self.at_once = message
        if self.requested:
            raise RunInterrupted(message)

    def _handle(self, number: int, frame: object) -> None:
        if self.at_once is not None:
            raise RunInterrupted(self.at_once)
        if self.requested and number == signal.SIGINT:
            previous = self._previous.get(number)
            if callable(previous):
                previous(number, frame)
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step to save the run... (Ctrl-C again to stop at once)")


class Trainer:
    """Trains a prepared model; everything it needs is decided before (see loraft.training)."""

    def __init__(
        self,
        recipe: Recipe,
        task: Task,
        accelerator: Accelerator,
        parts: TrainingParts,
        run: RunDirectory | None,
        trackers: Trackers,
        stop: StopSignals,
        started: float,
    ) -> None:
        self.recipe, self.task, self.accelerator = recipe, task, accelerator
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.order, self.examples, self.tokenizer = parts.order, parts.examples, parts.tokenizer
        self.eval_loader = parts.eval_loader
        self.run, self.trackers, self.stop = run, trackers, stop
        self.started, self.wall_before = started, 0.0  # wall_before: earlier sessions (resume)
        self.progress = Progress()
        self.method = method_of(recipe)
        self.plain_model = accelerator.unwrap_model(self.model)  # what the method's hooks read
        self.total_steps = self.order.total_steps(recipe.train.epochs, recipe.train.max_steps)
        self.eval_every = recipe.train.eval_every or self.order.steps_per_epoch
        self.metric = recipe.eval.metric or task.default_metric
        self.greater_is_better = not self.metric.endswith(("loss", "perplexity"))

    # --- the loop -----------------------------------------------------------------------

    def fit(self) -> Progress:
        """Train until `total_steps`, evaluating and saving on the way."""
        if self.progress.step == 0 and self.recipe.eval.at_start:
            self.evaluate(candidate=False)  # the untrained baseline
        bar = tqdm(
            total=self.total_steps,
            initial=self.progress.step,
            desc=self.recipe.name,
            disable=not self.accelerator.is_main_process,
        )
        with bar:
            while self.progress.step < self.total_steps:
                step = self.progress.step + 1
                tick = time.perf_counter()
                result = self.train_step(step)
                self.progress.train_s += time.perf_counter() - tick
                self.record_step(step, result, bar)
                last = step == self.total_steps
                if step % self.eval_every == 0 or last:
                    self.evaluate()
                if self.saves_at(step) or last:
                    self.save_progress()
        return self.progress

    def train_step(self, step: int) -> StepResult:
        """One optimizer step over this process's micro-batches of `step` (see the module doc)."""
        plan = self.order.micro_batches(step, self.rank)
        micro_batches = [self.collate(micro) for micro in plan]
        targets, tokens, stop = self.sum_over_processes(
            sum(self.task.count_targets(batch) for batch in micro_batches),
            sum(
                0 if micro.placeholder else int(batch["attention_mask"].sum())
                for micro, batch in zip(plan, micro_batches, strict=True)
            ),
            float(self.stop.requested),
        )
        if stop:
            self.interrupt()
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        facts: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with self.micro_step(last=last):
                with self.accelerator.autocast():  # the loss too, not only the model's forward
                    summed = self.task.loss_sum(self.model, self.to_device(batch))
                objective = summed * self.accelerator.num_processes / max(targets, 1)
                penalty = self.method.regulariser(self.plain_model) if last else None
                if penalty is not None:  # once a step, whatever the split (AdaLoRA's)
                    objective = objective + penalty
                    facts["regulariser"] = float(penalty.detach())
                self.accelerator.backward(objective)
            loss_sum += summed.detach()
        max_norm = self.recipe.train.max_grad_norm or math.inf  # inf: measure, do not clip
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        (global_loss_sum,) = self.sum_over_processes(loss_sum)
        self.stop_if_not_finite(step, global_loss_sum / max(targets, 1), grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16: a step with inf gradients
            self.scheduler.step()
        if not self.accelerator.optimizer_step_was_skipped:  # inf gradients say nothing
            facts.update(self.method.after_optimizer_step(self.plain_model, step))
        self.optimizer.zero_grad(set_to_none=True)
        norm = None if grad_norm is None else float(grad_norm)
        return StepResult(global_loss_sum, targets, tokens, lr, norm, facts)

    @contextlib.contextmanager
    def micro_step(self, last: bool):
        """Gradients are synchronised across processes (and DeepSpeed steps) on the last
        micro-batch only: what `accelerator.accumulate` does, for windows of any length."""
        self.accelerator.gradient_state._set_sync_gradients(last)
        with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
            yield

    # --- bookkeeping ----------------------------------------------------------------------

    def record_step(self, step: int, result: StepResult, bar: tqdm) -> None:
        progress = self.progress
        progress.step, progress.train_tokens = step, progress.train_tokens + int(result.tokens)
        progress.window_loss += result.loss_sum
        progress.window_targets += result.targets
        rate = progress.train_tokens / max(progress.train_s, 1e-9)
        bar.update(1)
        bar.set_postfix(
            loss=f"{result.loss_sum / max(result.targets, 1):.4f}",
            lr=f"{result.lr:.2e}",
            tok_s=f"{rate:,.0f}",
        )
        if step % self.recipe.train.log_every == 0 or step == self.total_steps:
            record = {
                "kind": "train",
                "step": step,
                "epoch": round(step / self.order.steps_per_epoch, 4),
                "loss": progress.window_loss / max(progress.window_targets, 1),
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "tokens": progress.train_tokens,  # non-padding, since the start of the run
                "tokens_per_s": rate,
                **result.facts,
            }
            self.log(record)
            progress.window_loss, progress.window_targets = 0.0, 0.0

    def evaluate(self, candidate: bool = True) -> dict[str, Any]:
        """Evaluate on the periodic eval set; a better `eval.metric` saves `checkpoints/best`."""
        tick = time.perf_counter()
        metrics = {
            "step": self.progress.step,
            **evaluate_model(self.model, self.task, self.eval_loader, self.accelerator),
        }
        seconds = time.perf_counter() - tick
        self.progress.eval_s += seconds
        self.progress.last_eval = metrics
        self.log({"kind": "eval", **metrics, "seconds": seconds})
        if self.accelerator.is_main_process:
            tqdm.write(format_metrics("eval", metrics))
        value = metrics[self.metric]
        if candidate and self.is_better(value):
            self.progress.best_value, self.progress.best_step, self.progress.best_eval = (
                value,
                self.progress.step,
                metrics,
            )
            self.save_weights("best")
        return metrics

    def is_better(self, value: float) -> bool:
        best = self.progress.best_value
        if value != value:  # NaN is never the best
            return False
        return best is None or (value > best if self.greater_is_better else value < best)

    def saves_at(self, step: int) -> bool:
        every = self.recipe.train.save_every or self.eval_every
        return step % every == 0

    def update_clock(self) -> None:
        """Wall-clock time and peak memory so far, over every session of the run."""
        self.progress.wall_s = self.wall_before + time.perf_counter() - self.started
        self.progress.peak_memory_mb = max(
            self.progress.peak_memory_mb, peak_memory_mb(self.accelerator.device)
        )

    def save_progress(self) -> None:
        """`checkpoints/last` and a full training state (for --resume) at the current step; a
        disk that refuses the write is one line saying what is left to resume from."""
        try:
            self._save_progress()
        except Exception as error:
            reason = unwritable(error)
            if reason is None:
                raise
            states = RunDirectory(self.recipe.run_dir).train_state_path
            if self.progress.saved_step:
                kept = f"the last complete training state is step {self.progress.saved_step}'s (in {states})"
                then = "--resume"
            else:
                kept, then = "no training state was saved yet", "start again with --overwrite"
            raise LoraftError(
                f"step {self.progress.step}: {reason}; {kept}; free space, then {then}"
            ) from None

    def _save_progress(self) -> None:
        tick = time.perf_counter()
        self.update_clock()
        self.save_weights("last")
        counters = {**asdict(self.progress), "saved_step": self.progress.step}
        counters["scheduler"] = self.scheduler.state_dict()  # plain numbers: JSON, not a pickle
        counters["num_processes"] = self.accelerator.num_processes
        method_tensors, counters["method_state"] = self.method.training_state(self.plain_model)
        save_training_state(
            self.accelerator,
            RunDirectory(self.recipe.run_dir).train_state_path,
            self.progress.step,
            counters,
            self.recipe.train.keep_last,
            method_tensors,
        )
        self.progress.saved_step = self.progress.step
        self.progress.save_s += time.perf_counter() - tick

    def save_weights(self, name: str) -> None:
        # Every process takes part: under FSDP or ZeRO-3 the state dict is gathered here.
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.run is not None:
            info = {"step": self.progress.step, "eval": self.progress.last_eval}
            save_checkpoint(
                self.run.checkpoint(name), self.plain_model, state_dict, self.tokenizer, self.method, info
            )
        self.accelerator.wait_for_everyone()

    def interrupt(self) -> None:
        """Save what the run has (unless the newest state is current) and stop with directions."""
        recipe_file = RunDirectory(self.recipe.run_dir).recipe_path
        if self.progress.step == 0:
            raise RunInterrupted(
                f"interrupted before the first step: nothing to resume; start again with: "
                f"loraft train {recipe_file} --overwrite"
            )
        if self.progress.saved_step != self.progress.step:
            self.save_progress()
        saved = RunDirectory(self.recipe.run_dir).train_state_path
        raise RunInterrupted(
            f"interrupted after step {self.progress.step} of {self.total_steps}; saved "
            f"{saved}; resume with: loraft train {recipe_file} --resume"
        )

    def finishing_message(self) -> str:
        """What a stop during the final evaluation says: the last step's state is saved."""
        return (
            f"interrupted after the last step ({self.progress.step}), before the final evaluation "
            f"finished; finish it with: loraft train {RunDirectory(self.recipe.run_dir).recipe_path} --resume"
        )

    def stop_if_not_finite(self, step: int, loss: float, grad_norm: torch.Tensor | None) -> None:
        """A NaN or infinite loss (or gradient, unless fp16's scaler will skip it) ends the run;
        nothing after the last good step is saved."""
        scaler_handles_inf = self.accelerator.scaler is not None
        bad_norm = grad_norm is not None and not scaler_handles_inf and not math.isfinite(float(grad_norm))
        if math.isfinite(loss) and not bad_norm:
            return
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {float(grad_norm)}"
        kept = f"step {self.progress.saved_step}" if self.progress.saved_step else "no step (none was saved)"
        raise LoraftError(
            f"step {step}: the training {what}; stopped. checkpoints/last and train_state keep {kept}; "
            "try a lower train.lr, train.max_grad_norm, or precision fp32"
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(record)
        self.trackers.log(record)

    # --- data -----------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def collate(self, micro: MicroBatch) -> Batch:
        batch = self.task.collate([self.examples[index] for index in micro.indices], self.tokenizer)
        if micro.placeholder:  # keeps processes in step; contributes nothing
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        return batch

    def to_device(self, batch: Batch) -> Batch:
        return {key: value.to(self.accelerator.device, non_blocking=True) for key, value in batch.items()}

    def sum_over_processes(self, *values: float | torch.Tensor) -> list[float]:
        """Sum numbers over all processes in one collective (a no-op on one process)."""
        local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, "sum").tolist()


def evaluate_model(model: torch.nn.Module, task: Task, loader: DataLoader, accelerator: Accelerator) -> dict:
    """The task's metrics over `loader`, in the run's precision (mixed precision autocasts the
    metrics' computations as training does its loss)."""
    model.eval()
    with torch.inference_mode(), accelerator.autocast():
        return task.evaluate(model, loader, accelerator)


@dataclass
class TrainingParts:
    """What the trainer trains: prepared model, optimizer, schedule, data and eval loader."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: DataOrder
    examples: list[dict[str, Any]]
    eval_loader: DataLoader
    tokenizer: PreTrainedTokenizerBase


def format_metrics(prefix: str, metrics: dict[str, Any]) -> str:
    """`prefix key=value ...` for scalars, 4 decimals for floats."""
    shown = [
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if not isinstance(v, list | dict)
    ]
    return " ".join([prefix, *shown])
