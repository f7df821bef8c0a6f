"""`train_recipe`: recipe -> data -> model -> trainer -> run directory, fresh or resumed.

Everything that can be checked is checked before the run directory is touched: the recipe
(the validation pass), the folder, the data, the tokenizer and the model. Only then is an
earlier run replaced (with --overwrite) or reopened (with --resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin, set_seed
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from loraft.batches import DataOrder
from loraft.checkpoint import load_trained_model, save_base_model
from loraft.checks import check_context, check_recipe, context_of
from loraft.data import data_roots
from loraft.errors import LoraftError
from loraft.fingerprint import changes, fingerprint, read_fingerprint
from loraft.lm_loss import sparse_tied_embedding
from loraft.methods import apply_method, method_of
from loraft.models.loading import (
    SPILL_PATTERN,
    build_base_model,
    build_tokenizer,
    count_parameters,
    describe_parameters,
    frozen_weights_in,
    load_base_model,
)
from loraft.recipe import BUDGET_KEYS, PLACE_KEYS, Recipe
from loraft.run_dir import RunDirectory, state_step, write_atomically
from loraft.system import cpu_has_native_bf16, environment_facts, keep_freed_memory, resolve_precision
from loraft.tasks import build_task
from loraft.tasks.base import Task
from loraft.tokenizer import load_tokenizer
from loraft.trackers import Trackers, require_trackers
from loraft.trainer import Progress, StopSignals, Trainer, TrainingParts, evaluate_model
from loraft.training_state import (
    DAMAGED_HINT,
    keep_only_trainable_weights,
    load_training_state,
    read_method_tensors,
    saved_states,
)


@dataclass
class TrainResult:
    """What `train_recipe` hands back: the summary and the trained model with its tokenizer."""

    summary: dict
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    is_main_process: bool = True  # under DDP, only the main process reports


def train_recipe(
    recipe: Recipe,
    data_root: str | Path | None = None,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
) -> TrainResult:
    """Run a recipe end to end (resuming if the recipe says so); returns and writes the summary.
    A resume whose inputs (data files, base model) changed is refused unless
    `allow_changed_inputs`, which `metrics.jsonl` then records."""
    started = time.perf_counter()
    roots = data_roots(data_root)
    check_recipe(recipe, roots)
    require_trackers(recipe.train.trackers)
    precision = resolve_precision(recipe.train.precision)
    accelerator = make_accelerator(precision, recipe.train.compile)
    state, overwrite = resume_point(recipe, overwrite)
    changed = check_inputs(recipe, roots, allow_changed_inputs) if state is not None else []
    set_seed(recipe.train.seed)
    task = build_task(recipe, roots)
    if accelerator.device.type == "cpu" and task.kind == "causal_lm":
        keep_freed_memory()  # see there: length-grouped classification batches would fragment it
    run, tokenizer, base, train_set, eval_set, validation_set = prepare_run(
        recipe, task, state, overwrite, accelerator
    )
    selection_set = eval_set if validation_set is None else validation_set
    if validation_set is None:
        accelerator.print(SHARED_SPLIT_NOTE)
    if run is not None and (state is None or changed):
        record_inputs(run, recipe, roots, data_root, changed, state_step(state) if state else 0)
    for line in [*method_of(recipe).describe(base, recipe), *task.fit_to_model(base)]:
        accelerator.print(line)
    if accelerator.num_processes == 1:  # DDP's reducer refuses a gradient that is sparse
        sparse_tied_embedding(base)
    model = apply_method(base, recipe, task.kind)
    trainable, total = count_parameters(model)
    accelerator.print(describe_parameters(trainable, total))
    warn_about_slow_precision(precision, accelerator)
    if recipe.train.gradient_checkpointing:
        # Non-reentrant checkpointing: gradients reach LoRA weights behind frozen embeddings.
        model.activation_checkpointing_enable({"use_reentrant": False})
    parts = training_parts(
        recipe, task, accelerator, model, tokenizer, train_set, periodic_eval_set(recipe, selection_set)
    )
    retained = retain_before(recipe, roots, parts, tokenizer, accelerator)
    trackers = Trackers(
        recipe.train.trackers if run else [], recipe.run_dir, recipe.name, run.created() if run else ""
    )
    with StopSignals() as stop, run.held() if run else contextlib.nullcontext():
        trainer = Trainer(recipe, task, accelerator, parts, run, trackers, stop, started)
        if state is not None:
            resume_trainer(trainer, state)
        trackers.start({**recipe.model_dump(mode="json"), **parameter_counts(trainable, total)})
        try:
            spill = recipe.run_dir if recipe.run_dir.is_dir() else None
            with frozen_weights_in(model, held_dtype(recipe, precision, accelerator), spill):
                progress = trainer.fit()
            stop.stop_at_once(trainer.finishing_message())
            test_set = None if validation_set is None else eval_set
            final_eval, best_eval, test_eval, selected = final_metrics(
                trainer, task, run, selection_set, test_set, tokenizer
            )
            retain = retain_after(recipe, retained, selected, tokenizer, accelerator, trainer.progress)
        except BaseException:
            trackers.close()
            raise
        trainer.update_clock()
        summary = {
            **describe_run(recipe, base.config.model_type, trainable, total, len(train_set), len(eval_set)),
            "validation_examples": None if validation_set is None else len(validation_set),
            **describe_progress(progress, trainer.order.steps_per_epoch),
            "selection_split": "eval" if validation_set is None else "validation",
            "final_eval": final_eval,
            "best_metric": trainer.metric,
            "best_eval": best_eval,
            **({} if test_eval is None else {"test_eval": test_eval}),
            **({} if retain is None else {"retain": retain}),
            **task.summary_facts(),
            **environment_facts(accelerator, precision),
        }
        if run is not None:
            run.write_summary(summary)
        trackers.finish(summary)
    accelerator.end_training()
    # A plain model: without accelerate's autocast wrapper, its forward is the fp32 model the
    # checkpoint reloads to, whatever precision trained it.
    plain = accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False, keep_torch_compile=False)
    return TrainResult(summary, plain, tokenizer, accelerator.is_main_process)


# --- set-up -----------------------------------------------------------------------------


def make_accelerator(precision: str, compile: bool = False) -> Accelerator:
    """The run's accelerator (training and `loraft eval`): devices, processes, mixed precision."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; another run in this process (the
        # Python API, a test) may ask for another precision.
        AcceleratorState._reset_state()
    # gradient_accumulation_steps stays 1: the trainer normalises the loss itself (token-exact).
    # dynamic: batch lengths vary from step to step; one graph for all of them instead of a
    # recompilation for each new length. (Regional compilation would wrap the tied embedding
    # and LM head apart, which save_pretrained then refuses.)
    if compile:
        dynamo = {"dynamo_plugin": TorchDynamoPlugin(backend="inductor", dynamic=True)}
    else:
        dynamo = {"dynamo_backend": "no"}
    return Accelerator(
        cpu=multi_process_cpu(), mixed_precision="no" if precision == "fp32" else precision, **dynamo
    )


def multi_process_cpu() -> bool:
    """True under `torchrun` without GPUs: accelerate then needs cpu=True to use gloo DDP."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def resume_point(recipe: Recipe, overwrite: bool) -> tuple[Path | None, bool]:
    """The training state to resume from (None: a fresh run, whose folder is checked), and
    whether a fresh run replaces the run in its folder."""
    mode, run = recipe.train.resume, RunDirectory(recipe.run_dir)
    if mode is True and overwrite:
        raise LoraftError("--overwrite and --resume (train.resume) contradict each other: pick one")
    if run.is_run():
        run.refuse_symlinks()  # before anything is read from it, or written into it
        run.require_writable()
    states = saved_states(run.train_state_path) if mode and run.is_run() else []
    if states:
        saved = run.read_recipe()
        difference = recipe.first_difference(saved, ignore=(*BUDGET_KEYS, *PLACE_KEYS))
        if difference:
            raise LoraftError(
                f"--resume: {run.path} was trained with another recipe ({difference}, now vs then); "
                "only train.max_steps and train.epochs may change"
            )
        if run.is_finished() and not recipe.first_difference(saved, ignore=("train.resume", *PLACE_KEYS)):
            raise LoraftError(
                f"--resume: {run.path} has finished its {run.read_summary().get('steps')} steps; "
                "raise train.max_steps or train.epochs to train further"
            )
        return states[-1], False
    if mode is True:
        if not run.is_run():
            raise LoraftError(f"--resume: {run.path} is not a loraft run; start it without --resume")
        raise LoraftError(
            f"--resume: {run.path} stopped before it saved a training state; start it again with --overwrite"
        )
    # auto: an unfinished run that never saved a state has nothing to resume: start it again
    restart = mode == "auto" and run.is_run() and not run.is_finished()
    RunDirectory.check_available(run.path, overwrite or restart)
    return None, overwrite or restart


def check_inputs(recipe: Recipe, roots: list[Path], allowed: bool) -> list[str]:
    """What changed in the inputs of the run being resumed (a one-line refusal unless `allowed`)."""
    run = RunDirectory(recipe.run_dir)
    recorded = read_fingerprint(run.inputs_path)
    if recorded is None:  # a run from before loraft fingerprinted its inputs
        return []
    changed = changes(recorded, fingerprint(recipe, roots, run.base_model_path))
    if changed and not allowed:
        raise LoraftError(
            f"--resume: the inputs of {run.path} changed since it started: {'; '.join(changed[:3])}; "
            "resuming would mix two different runs (pass --allow-changed-inputs to do it anyway)"
        )
    return changed


def record_inputs(
    run: RunDirectory, recipe: Recipe, roots: list[Path], data_root, changed: list[str], step: int
) -> None:
    """Write the run's input fingerprint (and the data root it read them from); a resume that
    was allowed to go on with changed inputs says so in metrics.jsonl."""
    root = str(Path(data_root).expanduser().resolve()) if data_root else None
    inputs = {"data_root": root, "inputs": fingerprint(recipe, roots, run.base_model_path)}
    write_atomically(run.inputs_path, json.dumps(inputs, indent=2) + "\n")
    if changed:
        run.log({"kind": "note", "step": step, "changed_inputs": changed})
        print(f"note: resuming with changed inputs (--allow-changed-inputs): {'; '.join(changed)}")


def prepare_run(recipe: Recipe, task: Task, state: Path | None, overwrite: bool, accelerator: Accelerator):
    """Tokenizer, base model and tokenized train and eval sets, and the run directory (main
    process): created, or reopened.

    Whatever can still fail (the model, the LoRA targets, the tokenized rows) is done before
    the run directory is created, so a mistake never costs an earlier run under --overwrite.
    A from-scratch base is built once, by the main process of a fresh run, and saved in the
    run's `base_model/`; every other process, and every resume, loads it from there.
    """
    kind, labels = task.kind, task.model_options().get("num_labels", 0)
    train_rows, eval_rows = task.rows()
    validation_rows = task.validation_rows()
    run = None
    builds_base = state is None and accelerator.is_main_process
    ready = recipe.model.config is None or builds_base
    if ready:
        tokenizer = build_tokenizer(recipe, task.texts_for_tokenizer(train_rows))
        base = build_base_model(recipe, kind, tokenizer, labels)
        check_context(recipe, context_of(base.config))
        method_of(recipe).check(base, recipe, kind)
        train_set, eval_set, validation_set = tokenized_sets(
            task, tokenizer, train_rows, eval_rows, validation_rows
        )
        method_of(recipe).check_steps(
            recipe,
            data_order(recipe, accelerator, train_set).total_steps(
                recipe.train.epochs, recipe.train.max_steps
            ),
        )
    if accelerator.is_main_process:
        run = (
            RunDirectory.create(recipe.run_dir, overwrite)
            if state is None
            else RunDirectory.open(recipe.run_dir)
        )
        run.lock()  # until train_recipe ends (create took it already: a no-op then)
        run.write_recipe(recipe)
        if state is not None:
            run.truncate_metrics(state_step(state))
            run.summary_path.unlink(missing_ok=True)  # written again when the run ends
            run.example_values_path.unlink(missing_ok=True)
            for stale in run.path.glob(SPILL_PATTERN):  # left by a killed process
                stale.unlink(missing_ok=True)
        elif recipe.model.config is not None:
            save_base_model(run, base, tokenizer)
    accelerator.wait_for_everyone()
    if not ready:
        scratch_base = RunDirectory(recipe.run_dir).base_model_path
        tokenizer = load_tokenizer(str(scratch_base))
        base = load_base_model(recipe, kind, tokenizer, scratch_base, labels)
        train_set, eval_set, validation_set = tokenized_sets(
            task, tokenizer, train_rows, eval_rows, validation_rows
        )
    return run, tokenizer, base, train_set, eval_set, validation_set


def tokenized_sets(
    task: Task, tokenizer: PreTrainedTokenizerBase, train_rows, eval_rows, validation_rows=None
):
    """Train, eval and (if held out) validation features, rows without a target token dropped
    (with a count)."""
    validation = None
    if validation_rows is not None:
        validation = task.with_targets(task.tokenize(validation_rows, tokenizer), "validation")
    return (
        task.with_targets(task.tokenize(train_rows, tokenizer), "training"),
        task.with_targets(task.tokenize(eval_rows, tokenizer), "evaluation"),
        validation,
    )


def training_parts(
    recipe: Recipe, task: Task, accelerator: Accelerator, model, tokenizer, train_set, eval_set
) -> TrainingParts:
    """The prepared model and optimizer, the schedule, the data order and the eval loader."""
    grouped = task.kind == "classification" and recipe.data.group_by_length
    lengths = tuple(len(ids) for ids in train_set["input_ids"]) if grouped else None
    order = data_order(recipe, accelerator, train_set, lengths)
    total_steps = order.total_steps(recipe.train.epochs, recipe.train.max_steps)
    method_of(recipe).start_training(model, recipe, total_steps)
    optimizer = method_of(recipe).optimizer(model, recipe)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(recipe.train.warmup_ratio * total_steps), total_steps
    )
    eval_loader = eval_loader_for(recipe, task, eval_set, tokenizer)
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    keep_only_trainable_weights(accelerator, model)
    return TrainingParts(model, optimizer, scheduler, order, train_set.to_list(), eval_loader, tokenizer)


def data_order(recipe: Recipe, accelerator: Accelerator, train_set, lengths=None) -> DataOrder:
    """Which examples each optimizer step trains on, on each process (`loraft.batches`)."""
    train = recipe.train
    return DataOrder(
        len(train_set), train.batch_size, train.grad_accum, accelerator.num_processes, train.seed, lengths
    )


def eval_loader_for(recipe: Recipe, task: Task, eval_set, tokenizer) -> DataLoader:
    """Evaluation batches, longest examples first: similar lengths share a batch (less padding);
    the metrics do not depend on the order."""
    return DataLoader(
        eval_set.select(longest_first(eval_set)),
        batch_size=recipe.eval_batch_size,
        collate_fn=lambda features: task.collate(features, tokenizer),
    )


SHARED_SPLIT_NOTE = (
    "note: checkpoints are selected on the eval split and reported on it too, so the reported "
    "figures are optimistic; data.validation_fraction holds a validation split out of data.train "
    "and makes the eval split a test set"
)


def longest_first(dataset) -> list[int]:
    """The order `eval_loader_for` evaluates `dataset` in."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def example_values_of(model, task: Task, loader: DataLoader, accelerator: Accelerator, dataset) -> dict:
    """`task.example_values` of `eval_loader_for(dataset)`, put back in the dataset's order
    (gathered in the loader's order, as `gather_for_metrics` keeps it)."""
    model.eval()
    with torch.inference_mode(), accelerator.autocast():
        in_loader_order = task.example_values(model, loader, accelerator)
    order = longest_first(dataset)
    values = {}
    for name, column in in_loader_order.items():
        placed = [None] * len(order)
        for position, index in enumerate(order):
            placed[index] = column[position]
        values[name] = placed
    return values


def periodic_eval_set(recipe: Recipe, eval_set):
    """The eval examples used during training: a seeded sample of `eval.periodic_size`, or all."""
    size = recipe.eval.periodic_size
    if size is None or size >= len(eval_set):
        return eval_set
    return eval_set.shuffle(seed=recipe.data.seed).select(range(size))


def resume_trainer(trainer: Trainer, state: Path) -> None:
    """Restore weights, optimizer, schedule, RNG and counters; the step budget may have grown."""
    counters = load_training_state(trainer.accelerator, state, trainer.scheduler)
    tensors = read_method_tensors(state)  # a damaged file is its own one line
    try:
        trainer.method.load_training_state(trainer.plain_model, tensors, counters.get("method_state") or {})
    except (LoraftError, TypeError, ValueError, AttributeError) as error:  # a crafted state's shapes
        raise LoraftError(f"{state}: cannot be resumed from: {error}; {DAMAGED_HINT}") from None
    known = {f.name for f in fields(Progress)}
    trainer.progress = Progress(**{k: v for k, v in counters.items() if k in known})
    trainer.wall_before = trainer.progress.wall_s
    if trainer.progress.step > trainer.total_steps:
        raise LoraftError(
            f"--resume: the run already trained {trainer.progress.step} steps, more than the "
            f"{trainer.total_steps} the recipe asks now; raise train.max_steps or train.epochs"
        )
    # A changed budget changes the schedule: the next step's rate follows the new one.
    scheduler = trainer.scheduler
    for group, base, rule in zip(
        trainer.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * rule(scheduler.last_epoch)
    trainer.accelerator.print(f"resuming {trainer.recipe.run_dir} after step {trainer.progress.step}")


def held_dtype(recipe: Recipe, precision: str, accelerator: Accelerator) -> torch.dtype | None:
    """The dtype frozen weights are held in while training (`frozen_weights_in`): autocast's,
    unless the weights are sharded (FSDP, DeepSpeed) or compiled graphs would be traced again
    for the fp32 weights of the final evaluation."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if precision == "fp32" or sharded or recipe.train.compile:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def warn_about_slow_precision(precision: str, accelerator: Accelerator) -> None:
    """bf16 on a CPU without native support is emulated: often 10x slower than fp32."""
    if accelerator.device.type == "cpu" and precision != "fp32" and not cpu_has_native_bf16():
        capability = torch.backends.cpu.get_cpu_capability()
        accelerator.print(
            f"warning: train.precision={precision} on a CPU with {capability} and no avx512_bf16 or AMX "
            "(bf16 is emulated): expect it to be much slower than fp32; train.precision=auto picks fp32"
        )


# --- the end of a run --------------------------------------------------------------------


def final_metrics(
    trainer: Trainer, task: Task, run: RunDirectory | None, selection_set, test_set, tokenizer
) -> tuple[dict, dict, dict | None, torch.nn.Module]:
    """The last model and the best checkpoint, each on the whole selection set (validation, or
    eval without one; periodic evaluations may use a sample), and, with a validation split, the
    selected checkpoint on the test set, once. Generation scores and prediction files come from
    the selected checkpoint on the reported rows, as `loraft eval` reproduces them. The best
    checkpoint is read back only if it is needed and is not the model in memory (a second copy
    of a full model is a second peak of memory). Returns the selected model too."""
    recipe, accelerator, progress = trainer.recipe, trainer.accelerator, trainer.progress
    tick = time.perf_counter()
    final, best = progress.last_eval, dict(progress.best_eval)
    in_memory = progress.best_step == progress.step and accelerator.num_processes == 1
    loaded: list[torch.nn.Module] = []

    def best_model() -> torch.nn.Module:
        if in_memory:
            return accelerator.unwrap_model(trainer.model)
        if not loaded:
            loaded.append(
                load_trained_model(RunDirectory(recipe.run_dir), "best", recipe)[0].to(accelerator.device)
            )
        return loaded[0]

    def on_whole(dataset) -> DataLoader:
        return accelerator.prepare(eval_loader_for(recipe, task, dataset, tokenizer))

    # the selected checkpoint (the last where no evaluation chose one) on the reported rows,
    # each example's values kept for intervals and paired comparisons (`loraft compare`)
    reported_set = selection_set if test_set is None else test_set
    selected_last = progress.best_step in (progress.step, None)
    selected = trainer.model if selected_last else best_model()
    values = example_values_of(selected, task, on_whole(reported_set), accelerator, reported_set)
    step = progress.best_step or progress.step
    scored = {"step": step, **task.metrics(values)}
    if len(trainer.eval_loader.dataset) < len(selection_set):  # periodic evaluations took a sample
        if test_set is None and selected_last:
            final = dict(scored)
        else:
            final = {
                "step": progress.step,
                **evaluate_model(trainer.model, task, on_whole(selection_set), accelerator),
            }
        if progress.best_step == progress.step:
            best = dict(final)
        elif progress.best_step is not None:
            best = (
                dict(scored)
                if test_set is None
                else {
                    "step": step,
                    **evaluate_model(best_model(), task, on_whole(selection_set), accelerator),
                }
            )
    test = None if test_set is None else scored
    if run is not None and accelerator.is_main_process:
        run.write_example_values("eval" if test is None else "test", step, values)
    reported = best if test is None else test
    if progress.best_step is not None and run is not None:
        reported.update(task.final_evaluation(best_model, tokenizer, run.path))
    progress.eval_s += time.perf_counter() - tick
    accelerator.wait_for_everyone()
    return final, best, test, selected


def retain_before(
    recipe: Recipe, roots: list[Path], parts: TrainingParts, tokenizer, accelerator
) -> tuple | None:
    """`eval.retain`: its examples and their loss before the first step (a resumed run measures
    its fresh model too: its trained weights are loaded after this)."""
    if recipe.eval.retain is None:
        return None
    from loraft.retain import read_retain_texts, retain_features, retain_loss

    texts = read_retain_texts(recipe, roots)
    features = retain_features(texts, tokenizer, recipe.data.max_length)
    before = retain_loss(parts.model, features, tokenizer, recipe.eval_batch_size, accelerator)
    accelerator.print(f"retain: {recipe.eval.retain}: loss {before['loss']:.4f} before training")
    return len(texts), features, before


def retain_after(recipe: Recipe, retained: tuple | None, model, tokenizer, accelerator, progress: Progress):
    """`eval.retain` with the selected checkpoint, against its loss before training."""
    if retained is None:
        return None
    from loraft.retain import retain_loss, retain_summary

    tick = time.perf_counter()
    count, features, before = retained
    after = retain_loss(model, features, tokenizer, recipe.eval_batch_size, accelerator)
    progress.eval_s += time.perf_counter() - tick
    return retain_summary(recipe.eval.retain, before, after, count)


def describe_run(
    recipe: Recipe, architecture: str, trainable: int, total: int, train_examples: int, eval_examples: int
) -> dict:
    """The summary's identity and parameter accounting."""
    return {
        "name": recipe.name,
        "run_dir": str(recipe.run_dir),
        "task": recipe.task,
        "method": recipe.method,
        "model": recipe.model.name or "scratch",
        "architecture": architecture,
        **parameter_counts(trainable, total),
        "train_examples": train_examples,
        "eval_examples": eval_examples,
    }


def parameter_counts(trainable: int, total: int) -> dict[str, Any]:
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total}


def describe_progress(progress: Progress, steps_per_epoch: int) -> dict:
    """The summary's training figures: tokens/s counts non-padding tokens of training steps."""
    return {
        "steps": progress.step,
        "epochs": round(progress.step / steps_per_epoch, 4),
        "train_tokens": progress.train_tokens,
        "train_s": progress.train_s,
        "eval_s": progress.eval_s,
        "save_s": progress.save_s,
        "train_tokens_per_s": progress.train_tokens / max(progress.train_s, 1e-9),
        "wall_s": progress.wall_s,
        "peak_memory_mb": progress.peak_memory_mb,
        "best_step": progress.best_step,
    }
