"""`head`: only the classification head trains (the CS224n "last linear layer" baseline).

A checkpoint holds just that layer (`head.safetensors`), applied on top of the base at load.
"""

from __future__ import annotations

from pathlib import Path

from loraft.methods.base import Method

HEAD_FILE = "head.safetensors"
HEAD_MODULE = "score"  # transformers' classification head, in every family


class HeadMethod(Method):
    name = "head"
    summary = "the classification head only"
    trains_layers_below_head = False

    def recipe_problem(self, recipe) -> str | None:
        if recipe.task_kind == "classification":
            return None
        return (
            f"method 'head' trains only a classification head; task '{recipe.task}' generates "
            "text (its output layer is usually tied to the embeddings): use lora or full"
        )

    def apply(self, model, recipe, kind):
        model.requires_grad_(False)
        getattr(model, HEAD_MODULE).requires_grad_(True)
        return model

    def save(self, directory: Path, model, state_dict: dict) -> None:
        from safetensors.torch import save_file

        trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        save_file({name: state_dict[name].contiguous() for name in trained}, directory / HEAD_FILE)

    def load(self, base, directory: Path, kind: str):
        from safetensors.torch import load_file

        from loraft.errors import LoraftError

        weights = load_file(directory / HEAD_FILE)
        result = base.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise LoraftError(
                f"{directory / HEAD_FILE}: weights for layers the model lacks: {result.unexpected_keys[:3]}"
            )
        return base
