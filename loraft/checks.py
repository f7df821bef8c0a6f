"""The one validation pass: every recipe mistake found before a model loads or a step runs.

`check_recipe` runs in `loraft validate` and at the start of `train`, `eval`, `generate` and
`study`. It checks, in order: the task's own fields (labels, template, prompts, metric),
generation settings against each other and against the model's context, the extra
`evaluate:` metrics, and (given data roots) the first rows of every data file, read by the
same code that training uses. The model's shape is read without loading weights: the sizes
a family knows offline (GPT-2's four) and `model.config` are known here, a local path's
`config.json` is read, and a hub id is checked only if its config is in the local cache
(training checks it once loaded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loraft.errors import LoraftError
from loraft.methods import method_of
from loraft.models import known_config, scratch_fields, shape_of
from loraft.models.quantize import check_quantization
from loraft.recipe import GenerationSection, Recipe
from loraft.text_metrics import parse_metric_spec


def check_recipe(recipe: Recipe, roots: list[Path] | None = None, evaluation_only: bool = False) -> list[str]:
    """Raise the first mistake in `recipe` as a one-line `LoraftError`; `roots`: check data too
    (`evaluation_only`: the files `loraft eval` reads). Returns what the task noted about the
    data it read (chat: each file's format)."""
    from loraft.tasks import TASK_CLASSES

    task_class = TASK_CLASSES[recipe.task]
    task_class.check_recipe(recipe)
    check_training(recipe)
    check_quantization(recipe)
    facts = model_facts(recipe)
    context = context_of(facts) if facts else None
    check_context(recipe, context)
    method_of(recipe).check_before_loading(recipe, facts.get("model_type") if facts else None, bool(facts))
    if recipe.task_kind != "classification":
        check_generation(recipe.generation, context, "generation")
        for name in recipe.study.decoders:
            check_generation(recipe.decoder_settings(name), context, f"study.decoders.{name}")
        check_extra_metrics(recipe)
    if recipe.eval.retain is not None and recipe.task_kind == "classification":
        raise LoraftError("eval.retain: needs a causal language-model task (a classifier has no LM head)")
    if roots is None:
        return []
    task = task_class(recipe, roots, evaluation_only)
    task.check_data()
    if recipe.eval.retain is not None and not evaluation_only:
        from loraft.retain import read_retain_texts

        read_retain_texts(recipe, roots)
    check_model_available(recipe)
    return task.data_notes()


def check_model_available(recipe: Recipe) -> None:
    """The model and tokenizer can be had: a local folder, the hub cache, or a hub that answers
    (one connection, at most 3 s): not a download that fails after the data is read."""
    from loraft.hub import hub_reachable, is_local, offline_hint

    if recipe.study.run:  # a study of a run uses that run's model
        return
    files = {
        "model.name": (recipe.model.name, "config.json"),
        "model.tokenizer": (recipe.model.tokenizer, None),
    }
    for field, (name, marker) in files.items():
        if (
            not name
            or is_local(name)
            or _cached(name, marker or "tokenizer_config.json", recipe.model.revision)
        ):
            continue
        if not hub_reachable():
            raise LoraftError(f"{field}: '{name}' is not a local folder nor in the hub cache{offline_hint()}")


def _cached(name: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, filename, revision=revision), str)
    except Exception:  # not a valid hub id: loading says so
        return False


def check_training(recipe: Recipe) -> None:
    train = recipe.train
    if len(set(train.trackers)) != len(train.trackers):
        raise LoraftError(f"train.trackers: a tracker is listed twice: {train.trackers}")
    if train.precision == "fp16" and not _cuda_available():
        raise LoraftError("train.precision: fp16 needs a CUDA GPU (none found); use bf16 or fp32")


def check_context(recipe: Recipe, context: int | None) -> None:
    """Examples longer than the model's positions would index past its position table (less
    the positions the method puts before each row)."""
    extra = method_of(recipe).extra_positions(recipe)
    if context is not None and recipe.data.max_length + extra > context:
        room, method = context - extra, f" after {extra} virtual tokens" if extra else ""
        raise LoraftError(
            f"data.max_length: {recipe.data.max_length} is longer than the model's context "
            f"({context} positions{method}); use data.max_length={room} or less"
        )


def check_generation(settings: GenerationSection, context: int | None, where: str) -> None:
    """Decoding settings that cannot work together, or with the model's context."""
    if settings.context_window is not None and settings.strategy == "beam":
        raise LoraftError(beam_with_window(where))
    if settings.strategy == "beam" and settings.num_beams < 2:
        raise LoraftError(f"{where}.num_beams: beam search needs 2 or more beams (1 is greedy decoding)")
    reencoding = settings.context_window is not None and settings.context_mode == "reencode"
    if context is not None and not reencoding and settings.max_new_tokens >= context:
        raise LoraftError(
            f"{where}.max_new_tokens: {settings.max_new_tokens} leaves no room for a prompt in the "
            f"model's {context}-token context; use {context // 2} or less"
        )


def beam_with_window(where: str = "generation") -> str:
    """The one message for beam search asked with a shortened context (checks and decoding)."""
    return (
        f"{where}.context_window: beam search is not supported with a shortened context; "
        "use strategy greedy or sample"
    )


def check_extra_metrics(recipe: Recipe) -> None:
    """`evaluate:` metrics are well formed, local code is allowed (whether or not this run
    generates: `loraft study` scores them too), and, when the run generates, each hub metric
    loads."""
    hub = []
    for spec in recipe.eval.metrics:
        name, local = parse_metric_spec(spec)
        if local and not recipe.eval.allow_local_metric_code:
            raise LoraftError(
                f"eval.metrics: {spec!r} runs Python code from {name}; "
                "pass --allow-local-metric-code on the command line if you trust it"
            )
        hub += [] if local else [spec]
    if not recipe.eval.generate:
        return
    from loraft.text_metrics import load_metric

    for spec in hub:  # local metric code is never run by a check: only when the run scores
        load_metric(spec)


def model_facts(recipe: Recipe) -> dict:
    """What the model's config says (`config.json` fields, `model_type` among them), read
    without weights; empty when only the hub could say."""
    if recipe.model.config is not None:
        return scratch_fields(recipe.model.config, recipe.model.tokenizer_vocab_size, 0, 0)
    known = known_config(recipe.model.name)
    if known is not None:
        return known[1]
    return local_config(recipe.model.name, recipe.model.revision) or {}


def context_of(config) -> int | None:
    """Positions of a model config (a transformers config or its `config.json` as a dict), in
    the keys of its family."""
    return shape_of(config if isinstance(config, dict) else config.to_dict()).context


def local_config(name: str, revision: str | None) -> dict | None:
    """The `config.json` of a local model folder (or of a cached hub copy), None if neither."""
    folder = Path(os.path.expanduser(name))
    path = folder / "config.json"
    if folder.is_dir() and not path.is_file():
        raise LoraftError(f"model.name: {folder} is a folder but not a model (no config.json in it)")
    if not folder.exists() and looks_like_a_path(name):
        raise LoraftError(
            f"model.name: '{name}' is not a folder here (from {Path.cwd()}) and cannot be a hub id "
            "(namespace/name)"
        )
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json", revision=revision)
        except Exception:  # not a valid hub id either: loading the model will say so
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LoraftError(f"model.name: {path} is not a readable model config") from None
    if not isinstance(config, dict):
        raise LoraftError(f"model.name: {path} holds a JSON {type(config).__name__}, not a model config")
    return config


def looks_like_a_path(name: str) -> bool:
    """A name that only a path can be: hub ids are `name` or `namespace/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
