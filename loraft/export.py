"""`loraft export`: a run's checkpoint as a folder the rest of the ecosystem loads, with a model card.

Without `--merge`, a LoRA run gives its PEFT adapter (the classifier head rides along) and the
tokenizer; on a from-scratch base, the base is copied into `base_model/`. With `--merge`, the
adapter is folded into the weights: a standalone model for plain `AutoModelFor*.from_pretrained`.
Full and head runs always export the whole model (a head alone is no standard format).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from loraft import __version__
from loraft.errors import LoraftError
from loraft.models.quantize import merged_in_full_precision
from loraft.recipe import Recipe
from loraft.recipe_files import NO_GRANTS, CodeGrants
from loraft.run_dir import BASE_MODEL, RunDirectory


def export_run(
    run_dir: str | Path,
    out: str | Path,
    merge: bool = False,
    checkpoint: str = "best",
    push_to_hub: str | None = None,
    grants: CodeGrants = NO_GRANTS,
) -> Path:
    """Write checkpoint `checkpoint` of a run to `out` (which must be new or empty); optionally push it."""
    from loraft.checkpoint import load_trained_model
    from loraft.fingerprint import read_fingerprint
    from loraft.methods import method_of

    run, out = RunDirectory.open(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoraftError(f"--out: {out} already exists and is not empty; choose a new folder")
    recipe = run.read_recipe(grants=grants)
    if merge and method_of(recipe).merge_refusal:
        raise LoraftError(method_of(recipe).merge_refusal)
    model, tokenizer = load_trained_model(run, checkpoint, recipe)
    family = architecture_name(model)
    if merge and recipe.model.quantize:  # the NF4 weights dequantised, the update added exactly
        exported, adapter = merged_in_full_precision(model), False
    else:
        exported, adapter = method_of(recipe).exported(model, merge)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".loraft-export-{out.name}-"
    for stale in out.parent.glob(f"{prefix}*"):  # left by an export that was killed mid-write
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))  # new, own
    try:
        if adapter:
            point_adapter_at_its_base(exported, recipe, out)
            exported.save_pretrained(staging, save_embedding_layers=False)
            if recipe.model.config is not None:
                shutil.copytree(run.base_model_path, staging / BASE_MODEL)
        else:
            exported.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        summary = run.read_summary() if run.is_finished() else {}
        local_data = "data.train" in (read_fingerprint(run.inputs_path) or {"data.train": True})
        card = model_card(recipe, summary, checkpoint, adapter, family, tokenizer.pad_token_id, local_data)
        (staging / "README.md").write_text(card, encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # our own staging folder only
        raise
    staging.chmod(0o755)  # mkdtemp makes it private to its owner
    if out.exists():
        out.rmdir()  # empty, checked above
    staging.rename(out)
    if push_to_hub:
        push(out, push_to_hub)
    return out


def point_adapter_at_its_base(model, recipe: Recipe, out: Path) -> None:
    """`base_model_name_or_path` that resolves from anywhere: a hub id as it is, a local base
    as its absolute path, a from-scratch base as the copy that travels with the export."""
    from loraft.hub import is_local

    if recipe.model.config is not None:
        base = str(out.resolve() / BASE_MODEL)
    elif is_local(recipe.model.name):
        base = str(Path(recipe.model.name).expanduser().resolve())
    else:
        base = recipe.model.name
    for config in model.peft_config.values():
        config.base_model_name_or_path = base


def architecture_name(model) -> tuple[str, str]:
    """(model_type, the family's name for people) of a loaded model."""
    from loraft.models.loading import architecture_of

    family = architecture_of(model)
    model_type = model.config.model_type
    return model_type, family.family if family else model_type


def model_card(
    recipe: Recipe,
    summary: dict,
    checkpoint: str,
    adapter: bool,
    family: tuple[str, str],
    pad_token_id: int | None = None,
    local_data: bool = True,
) -> str:
    """A model card in the hub's format: YAML metadata, then what the model is and how it was made."""
    from huggingface_hub import ModelCardData

    model_type, family_name = family
    classification = recipe.task_kind == "classification"
    base = recipe.model.name if recipe.model.config is None else None
    metadata = ModelCardData(
        library_name="peft" if adapter else "transformers",
        base_model=base if base and not Path(base).exists() else None,
        pipeline_tag="text-classification" if classification else "text-generation",
        tags=["loraft", model_type, recipe.method, recipe.task],
        datasets=[recipe.data.hub.id] if recipe.data.hub and not local_data else None,
    )
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {recipe.name}\n\n{recipe.description or f'A {family_name} fine-tuned with loraft.'}",
        "## Model\n\n" + _bullets(_model_facts(recipe, summary, checkpoint, adapter, family_name)),
        "## Data\n\n" + _bullets(_data_facts(recipe, summary, local_data)),
        "## Training\n\n" + _bullets(_training_facts(recipe, summary)),
    ]
    split = summary.get("selection_split", "eval")
    if checkpoint == "best" and "test_eval" in summary:
        evaluated, split = summary["test_eval"], "test"
    else:
        evaluated = summary.get("best_eval" if checkpoint == "best" else "final_eval", {})
    metrics = {k: v for k, v in evaluated.items() if isinstance(v, int | float) and k != "step"}
    if metrics:
        rows = "\n".join(
            f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in metrics.items()
        )
        sections.append(
            f"## Metrics ({checkpoint} checkpoint, step {evaluated.get('step')}, {split} split"
            f"{', which also selected it' if split == 'eval' and checkpoint == 'best' else ''})\n\n"
            f"| metric | value |\n|---|---|\n{rows}"
        )
    sections.append("## Use\n\n```python\n" + _usage(recipe, adapter, pad_token_id) + "\n```")
    sections.append(
        f"Made with loraft {__version__}; the full recipe is in `recipe` below.\n\n"
        f"```json\n{json.dumps(recipe.model_dump(mode='json'), indent=2)}\n```"
    )
    return "\n\n".join(sections) + "\n"


def push(folder: Path, repo_id: str) -> None:
    """Upload an exported folder to the hub (the user needs a token: `huggingface-cli login`)."""
    from huggingface_hub import HfApi

    from loraft.hub import go_offline_unless_reachable, offline_hint

    go_offline_unless_reachable()
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as error:  # network, authentication and permission errors alike
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoraftError(f"--push-to-hub: cannot upload to {repo_id}: {reason}{offline_hint()}") from None


def _model_facts(recipe: Recipe, summary: dict, checkpoint: str, adapter: bool, family: str) -> list[str]:
    from loraft.methods import method_of

    shape = recipe.model.config
    base = recipe.model.name or (
        f"a {family} trained from scratch ({shape.layers} layers, width {shape.width}, "
        f"{shape.heads} heads, {shape.context} positions)"
    )
    facts = [
        f"Base model: {base} ({family})",
        f"Method: {recipe.method}" + (" (adapter not merged)" if adapter else ""),
        *method_of(recipe).card_facts(recipe),
    ]
    if summary:
        facts.append(
            f"Trainable parameters: {summary['trainable_params']:,} of {summary['total_params']:,} "
            f"({summary['trainable_pct']:.4f}%)"
        )
    return [*facts, f"Checkpoint: {checkpoint}"]


def _data_facts(recipe: Recipe, summary: dict, local_data: bool) -> list[str]:
    data = recipe.data
    if local_data or data.hub is None:
        source = f"{data.train} (a local file)" if data.train else ""
    else:
        source = f"the hub dataset {data.hub.id}"
    facts = [
        f"Task: {recipe.task}",
        f"Training data: {source}" + (f", eval: {data.eval}" if data.eval else ""),
    ]
    if summary:
        facts.append(
            f"Examples: {summary['train_examples']:,} training, {summary['eval_examples']:,} evaluation"
        )
    if summary.get("chat_template_source"):
        facts.append(
            f"Chat template: {summary['chat_template_source']}, saved with the tokenizer (prompts are "
            f"formatted as in training); loss on: {data.train_on or 'assistant'} turns"
        )
    return [*facts, f"Tokens per example: up to {data.max_length}; data seed {data.seed}"]


def _training_facts(recipe: Recipe, summary: dict) -> list[str]:
    train = recipe.train
    facts = [
        f"AdamW, lr {train.lr:g}, warm-up {train.warmup_ratio:g} then linear decay, weight decay "
        f"{train.weight_decay:g}",
        f"Batch {train.batch_size} x accumulation {train.grad_accum}, "
        f"precision {summary.get('precision', train.precision)}, seed {train.seed}",
    ]
    if summary:
        facts.append(
            f"{summary['steps']:,} optimizer steps ({summary['epochs']} epochs) on "
            f"{summary.get('device', '?')}, {summary['wall_s']:.0f} s"
        )
    return facts


def _usage(recipe: Recipe, adapter: bool, pad_token_id: int | None) -> str:
    classification = recipe.task_kind == "classification"
    auto = "AutoModelForSequenceClassification" if classification else "AutoModelForCausalLM"
    if not adapter:
        return f'from transformers import {auto}, AutoTokenizer\nmodel = {auto}.from_pretrained("PATH")'
    base = f"PATH/{BASE_MODEL}" if recipe.model.config is not None else recipe.model.name
    # the classifier pools at the last token that is not padding: it must know the pad id
    labels = f", num_labels={len(recipe.data.labels)}, pad_token_id={pad_token_id}" if classification else ""
    return (
        f"from peft import PeftModel\nfrom transformers import {auto}\n"
        f'model = PeftModel.from_pretrained({auto}.from_pretrained("{base}"{labels}), "PATH")'
    )


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)
