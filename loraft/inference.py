"""Loading a trained run (or any causal LM) for generation, with the run's decoding settings."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from loraft.checkpoint import load_checkpoint
from loraft.errors import LoraftError
from loraft.recipe import GenerationSection
from loraft.run_dir import RunDirectory
from loraft.tokenizer import load_tokenizer


def load_generator(
    target: str, checkpoint: str = "best"
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, GenerationSection]:
    """A run directory (base + adapter, or full weights) or a model path / hub id.

    A run brings its recipe's `generation` settings; a plain model gets the defaults.
    """
    if (Path(target) / "recipe.yaml").is_file():
        run = RunDirectory.open(target)
        recipe = run.read_recipe()
        if recipe.task == "classification":
            raise LoraftError(f"{target}: a classification run does not generate text")
        model, tokenizer = load_checkpoint(run, checkpoint, recipe, "causal_lm")
        return model, tokenizer, recipe.generation
    try:
        model = AutoModelForCausalLM.from_pretrained(target)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise LoraftError(f"{target}: not a run directory, and not a loadable model: {reason}") from None
    return model, load_tokenizer(target), GenerationSection()


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
