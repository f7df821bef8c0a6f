"""`loraft study`: standard against shortened-context decoding, on one model and one prompt set.

This is the experiment of Tu, Yen and Pei (seed 000): generate continuations of held-out
texts with each decoder and compare smoothed sentence BLEU (mean, best and worst tenth),
chrF, distinct-n and decoding speed.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraft.checks import check_recipe
from loraft.data import data_roots
from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.recipe_files import CodeGrants
from loraft.run_dir import RunDirectory

STUDY_FILE = "study.json"
COLUMNS = [
    ("gen_sentence_bleu_mean", "BLEU mean"),
    ("gen_sentence_bleu_top10", "top 10%"),
    ("gen_sentence_bleu_bottom10", "bottom 10%"),
    ("gen_chrf", "chrF"),
    ("gen_distinct_1", "dist-1"),
    ("gen_distinct_2", "dist-2"),
    ("tokens_per_s", "tokens/s"),
]


def run_study(recipe: Recipe, data_root: str | Path | None = None, overwrite: bool = False) -> dict:
    """Scores of every decoder in `study.decoders`, also written to <output_dir>/study.json."""
    from loraft.generation import generate_with_stats
    from loraft.tasks import build_task
    from loraft.tasks.causal_lm import score_generations

    if recipe.task_kind == "classification":
        raise LoraftError(f"task: '{recipe.task}' does not generate text; a study needs a causal-LM task")
    roots = data_roots(data_root)
    check_recipe(recipe, roots)
    task = build_task(recipe, roots)
    output = recipe.run_dir / STUDY_FILE
    if output.exists() and not overwrite:
        raise LoraftError(f"{output}: a study is already there; pass --overwrite to replace it")
    model, tokenizer = _study_model(recipe)
    cases = task.generation_cases()
    prompts = [case.prompt for case in cases]
    results: dict[str, dict] = {}
    for name in recipe.study.decoders:
        settings = recipe.decoder_settings(name)
        generated = generate_with_stats(model, tokenizer, prompts, settings)
        hypotheses = [task.hypothesis(c, t) for c, t in zip(cases, generated.texts, strict=True)]
        scores = score_generations(hypotheses, [case.reference for case in cases], recipe.eval.metrics)
        scores["tokens_per_s"] = generated.tokens_per_second
        scores["settings"] = settings.model_dump(mode="json")
        results[name] = scores
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"prompts": len(prompts), "decoders": results}, indent=2) + "\n")
    return results


def _study_model(recipe: Recipe):
    """The studied model on the GPU when there is one: a run's checkpoint, or `model.name`."""
    from loraft.inference import load_generator

    if recipe.study.run:
        if not RunDirectory(recipe.study.run).is_run():
            raise LoraftError(f"study.run: {recipe.study.run} is not a loraft run directory (train it first)")
        granted = CodeGrants(recipe.model.trust_remote_code, recipe.eval.allow_local_metric_code)
        generator = load_generator(recipe.study.run, recipe.study.checkpoint, grants=granted)
    elif not recipe.model.name:
        raise LoraftError("study.run: a model trained from scratch must be studied through its run directory")
    else:
        generator = load_generator(recipe.model.name)
    return generator.model, generator.tokenizer


def format_study(results: dict[str, dict]) -> str:
    """A fixed-width table, one decoder per row."""
    width = max(len(name) for name in results) + 2
    header = "decoder".ljust(width) + "".join(title.rjust(12) for _, title in COLUMNS)
    rows = [
        name.ljust(width) + "".join(f"{scores[key]:12.3f}" for key, _ in COLUMNS)
        for name, scores in results.items()
    ]
    return "\n".join([header, *rows])
