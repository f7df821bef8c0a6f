"""Loading a trained run (or any causal LM) for generation, with the run's decoding settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from loraft.errors import LoraftError
from loraft.hub import go_offline_unless_reachable, is_local, offline_hint
from loraft.recipe import GenerationSection
from loraft.recipe_files import NO_GRANTS, CodeGrants
from loraft.run_dir import RunDirectory


class Generator(NamedTuple):
    """A model ready to continue prompts: its tokenizer, its decoding settings, and how a
    user's prompt is framed (a run's template; plain text for a bare model or with --raw)."""

    model: object
    tokenizer: object
    settings: GenerationSection
    frame: Callable[[str], str]
    encode: Callable[[object, str], list[int]] | None = None  # a framed prompt's ids; None: the rule


def load_generator(
    target: str,
    checkpoint: str = "best",
    raw: bool = False,
    grants: CodeGrants = NO_GRANTS,
    chat: bool = False,
) -> Generator:
    """A run directory (base + adapter, or full weights) or a model path / hub id, on the GPU
    when there is one. A run brings its recipe's `generation` settings and prompt template;
    `chat`: prompts are conversations in the tokenizer's chat template (a chat run's always are)."""
    from accelerate import PartialState

    device = PartialState().device
    if RunDirectory(target).is_run():
        model, tokenizer, settings, task = _from_run(RunDirectory.open(target), checkpoint, grants)
        generator = Generator(model.to(device), tokenizer, settings, task.format_prompt, task.encode_prompt)
    else:
        model, tokenizer = _from_model(target)
        generator = Generator(model.to(device), tokenizer, GenerationSection(), lambda text: text)
    if chat:
        from loraft.tasks.chat import template_ids

        return generator._replace(frame=_chat_frame(tokenizer, target), encode=template_ids)
    return generator._replace(frame=lambda text: text, encode=None) if raw else generator


def _chat_frame(tokenizer, target: str) -> Callable[[str], str]:
    from loraft.tasks.chat import generation_prompt, messages_of_prompt

    if not tokenizer.chat_template:
        raise LoraftError(
            f"--chat: {target}'s tokenizer has no chat template (train a chat run, or give --raw prompts)"
        )
    return lambda text: generation_prompt(tokenizer, messages_of_prompt(text))


def planned_settings(target: str, checkpoint: str, changes: dict) -> GenerationSection:
    """The decoding settings `loraft generate` will use (the run's, with `changes`), checked
    against each other and the model's context from its config: before any weights load."""
    from loraft.checks import check_generation, context_of, local_config, model_facts

    if RunDirectory(target).is_run():
        run = RunDirectory.open(target)
        run.saved_checkpoint(checkpoint)
        recipe = run.read_recipe()
        base, facts = recipe.generation, model_facts(recipe)
    else:
        base, facts = GenerationSection(), (local_config(target, None) if is_local(target) else None) or {}
    settings = with_changes(base, changes)
    check_generation(settings, context_of(facts) if facts else None, "generation")
    return settings


def with_changes(settings: GenerationSection, changes: dict) -> GenerationSection:
    """The settings with command-line changes, validated by the recipe schema."""
    from pydantic import ValidationError

    try:
        return GenerationSection.model_validate({**settings.model_dump(), **changes})
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across fields names them itself
            raise LoraftError(f"generation settings: {message}") from None
        raise LoraftError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}") from None


def _from_run(run: RunDirectory, checkpoint: str, grants: CodeGrants):
    from loraft.checkpoint import load_trained_model
    from loraft.checks import check_recipe
    from loraft.tasks import TASK_CLASSES

    recipe = run.read_recipe(grants=grants)
    if recipe.task_kind == "classification":
        raise LoraftError(f"{run.path}: a classification run does not generate text")
    check_recipe(recipe)
    model, tokenizer = load_trained_model(run, checkpoint, recipe)
    task = TASK_CLASSES[recipe.task](recipe, [])
    task.adopt_tokenizer(tokenizer)
    return model, tokenizer, recipe.generation, task


def _from_model(target: str):
    from transformers import AutoModelForCausalLM

    from loraft.models.loading import with_fast_kernels
    from loraft.tokenizer import load_tokenizer

    if not is_local(target):
        go_offline_unless_reachable()
    try:
        model = AutoModelForCausalLM.from_pretrained(target)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise LoraftError(
            f"{target}: not a run directory, and not a loadable model: {reason}{offline_hint()}"
        ) from None
    return with_fast_kernels(model), load_tokenizer(target)


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """Prompts from the command line, then one per line of `prompts_file` (blank lines skipped)."""
    collected = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise LoraftError(f"--prompts-file: '{prompts_file}' not found")
        try:
            text = prompts_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LoraftError(f"--prompts-file: '{prompts_file}' is not UTF-8 text") from None
        collected += [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not collected:
        raise LoraftError("give at least one --prompt TEXT or a --prompts-file FILE")
    return collected
