"""`vera`: VeRA (Kopiczko et al. 2024) shares one pair of frozen random matrices across every
target layer and trains only two scaling vectors per layer: LoRA's rank at a fraction of its
parameters. PEFT's VeRA; the shared matrices are saved with the adapter (from a seeded key),
so the adapter reloads on its own. A checkpoint is a PEFT adapter; `export --merge` folds it in.
"""

from __future__ import annotations

from loraft.methods.adapter import AdapterMethod


class VeraMethod(AdapterMethod):
    name = "vera"
    summary = "VeRA: shared random low-rank matrices, trained scaling vectors (vera: section)"
    section = "vera"

    def peft_config(self, model, recipe, kind):
        from peft import VeraConfig

        from loraft.models.targets import peft_targets, stores_transposed

        layers = peft_targets(self.targets(model, recipe))
        return VeraConfig(
            task_type=self.task_type(kind),
            r=recipe.vera.r,
            target_modules=layers,
            vera_dropout=recipe.vera.dropout,
            d_initial=recipe.vera.d_initial,
            projection_prng_key=recipe.train.seed,
            save_projection=True,
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def label(self, recipe) -> str:
        return f"vera r={recipe.vera.r} {self.targets_label(recipe)}"

    def settings(self, recipe) -> dict:
        return {"rank": recipe.vera.r, "targets": self.targets_label(recipe)}

    def frontier_line(self, recipe) -> str | None:
        return f"vera {self.targets_label(recipe)}"  # its ranks along the line

    def card_facts(self, recipe) -> list[str]:
        vera = recipe.vera
        return [
            f"VeRA: rank {vera.r} (shared frozen random matrices), d_initial {vera.d_initial:g}, "
            f"dropout {vera.dropout:g}, targets {self.targets_label(recipe, ', ')}"
        ]
