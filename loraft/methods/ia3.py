"""`ia3`: IA3 (Liu et al. 2022) rescales the activations of its target layers by trained vectors:
a few thousand parameters, no rank to choose. PEFT's IA3; its per-architecture defaults.

A target inside the MLP (the family's `mlp` layers) is a "feed-forward" layer to PEFT: its
input is scaled, the others' output. A checkpoint is a PEFT adapter; `export --merge` folds it in.
"""

from __future__ import annotations

from loraft.methods.adapter import AdapterMethod


class IA3Method(AdapterMethod):
    name = "ia3"
    summary = "IA3: learnt scales of activations (ia3: section)"
    section = "ia3"

    def default_targets(self, architecture, model_type: str) -> list[str] | None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

        return TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)

    def peft_config(self, model, recipe, kind):
        from peft import IA3Config

        from loraft.models.loading import architecture_of
        from loraft.models.targets import peft_targets, resolve_targets, stores_transposed

        layers = peft_targets(self.targets(model, recipe))
        architecture = architecture_of(model)
        mlp = resolve_targets(model, ["mlp"], architecture)["mlp"] if architecture else []
        feedforward = [layer for layer in layers if layer in set(mlp)]
        return IA3Config(
            task_type=self.task_type(kind),
            target_modules=layers,
            feedforward_modules=feedforward,
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def label(self, recipe) -> str:
        return f"ia3 {self.targets_label(recipe)}"

    def frontier_line(self, recipe) -> str | None:
        return f"ia3 {self.targets_label(recipe)}"  # no rank: a line of one point a set of targets

    def card_facts(self, recipe) -> list[str]:
        return [f"IA3: targets {self.targets_label(recipe, ', ')}"]
