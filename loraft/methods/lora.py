"""`lora`: PEFT LoRA adapters on the recipe's target layers (see `loraft.models.targets`).

For classification the head trains too and is saved with the adapter (`modules_to_save`,
PEFT's SEQ_CLS task). A checkpoint is a PEFT adapter folder; `export --merge` folds it in.
"""

from __future__ import annotations

from loraft.methods.adapter import AdapterMethod


class LoraMethod(AdapterMethod):
    name = "lora"
    summary = "low-rank adapters (lora: section)"
    section = "lora"

    def default_targets(self, architecture, model_type: str) -> list[str] | None:
        return list(architecture.default_targets) if architecture else None

    def peft_config(self, model, recipe, kind):
        from peft import LoraConfig

        from loraft.models.targets import peft_targets, stores_transposed

        layers = peft_targets(self.targets(model, recipe))
        return LoraConfig(
            task_type=self.task_type(kind),
            r=recipe.lora.r,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout,
            target_modules=layers,
            bias=recipe.lora.bias,
            use_rslora=recipe.lora.use_rslora,
            use_dora=recipe.lora.use_dora,
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def check(self, model, recipe, kind) -> None:
        """The targets match layers, and the rank is no larger than the narrowest of them (a
        rank beyond it adds parameters and no expressiveness)."""
        self.peft_config(model, recipe, kind)
        modules = dict(model.named_modules())
        layers = [name for names in self.targets(model, recipe).values() for name in names]
        narrowest = min(min(modules[name].weight.shape) for name in layers)
        if recipe.lora.r > narrowest:
            from loraft.errors import LoraftError

            raise LoraftError(
                f"lora.r: {recipe.lora.r} is more than the narrowest adapted layer's width ({narrowest}); "
                f"use {narrowest} or less"
            )

    def label(self, recipe) -> str:
        """`lora r=8 attention`, `dora r=8 all-linear`, `rslora r=64 mlp lora+16`."""
        plus = f" lora+{recipe.lora.plus_lr_ratio:g}" if recipe.lora.plus_lr_ratio else ""
        return f"{self._variant(recipe)} r={recipe.lora.r} {self.targets_label(recipe)}{plus}"

    def settings(self, recipe) -> dict:
        return {"rank": recipe.lora.r, "targets": self.targets_label(recipe)}

    def frontier_line(self, recipe) -> str | None:
        """One line a variant on one set of targets: its ranks along it."""
        plus = f" lora+{recipe.lora.plus_lr_ratio:g}" if recipe.lora.plus_lr_ratio else ""
        return f"{self._variant(recipe)} {self.targets_label(recipe)}{plus}"

    def optimizer(self, model, recipe):
        """LoRA+ (Hayou et al. 2024): the B matrices, and PEFT's 1-D parameters with them, learn
        `plus_lr_ratio` times faster; PEFT's own grouping (`create_loraplus_optimizer`)."""
        if not recipe.lora.plus_lr_ratio:
            return super().optimizer(model, recipe)
        import torch
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=recipe.train.lr,
            loraplus_lr_ratio=recipe.lora.plus_lr_ratio,
            weight_decay=recipe.train.weight_decay,
            fused=True,
        )

    def card_facts(self, recipe) -> list[str]:
        lora = recipe.lora
        variants = [
            *(["rsLoRA scaling (alpha/sqrt(r))"] if lora.use_rslora else []),
            *(["DoRA (magnitude and direction)"] if lora.use_dora else []),
            *(
                [f"LoRA+ (B matrices at {lora.plus_lr_ratio:g}x the learning rate)"]
                if lora.plus_lr_ratio
                else []
            ),
        ]
        return [
            f"LoRA: rank {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g}, "
            f"targets {self.targets_label(recipe, ', ')}" + (f"; {', '.join(variants)}" if variants else "")
        ]

    @staticmethod
    def _variant(recipe) -> str:
        """lora, dora, rslora or rsdora."""
        return ("rs" if recipe.lora.use_rslora else "") + ("dora" if recipe.lora.use_dora else "lora")
