"""`lora`: PEFT LoRA adapters on the recipe's target layers (see `loraft.models.targets`).

For classification the head trains too and is saved with the adapter (`modules_to_save`,
PEFT's SEQ_CLS task). A checkpoint is a PEFT adapter folder; `export --merge` folds it in.
"""

from __future__ import annotations

from pathlib import Path

from loraft.methods.base import Method


class LoraMethod(Method):
    name = "lora"
    summary = "low-rank adapters (lora: section)"
    section = "lora"

    def targets(self, model, recipe) -> dict[str, list[str]]:
        """The recipe's targets (the family's defaults when it names none) -> the layers matched."""
        from loraft.errors import LoraftError
        from loraft.models.loading import architecture_of
        from loraft.models.targets import resolve_targets

        architecture = architecture_of(model)
        targets = recipe.lora.target_modules
        if targets is None:
            if architecture is None:
                raise LoraftError(
                    f"lora.target_modules: loraft has no default targets for '{model.config.model_type}' "
                    "models; name its layers, or use all-linear"
                )
            targets = list(architecture.default_targets)
        return resolve_targets(model, targets, architecture)

    def config(self, model, recipe, kind):
        from peft import LoraConfig, TaskType

        from loraft.models.targets import peft_targets, stores_transposed

        layers = peft_targets(self.targets(model, recipe))
        return LoraConfig(
            task_type=TaskType.SEQ_CLS if kind == "classification" else TaskType.CAUSAL_LM,
            r=recipe.lora.r,
            lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout,
            target_modules=layers,
            bias=recipe.lora.bias,
            use_rslora=recipe.lora.use_rslora,
            use_dora=recipe.lora.use_dora,
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def check_before_loading(self, recipe, model_type, known) -> None:
        from loraft.models import architecture_for
        from loraft.models.targets import check_target_names

        if recipe.lora.target_modules is not None and known:
            check_target_names(recipe.lora.target_modules, architecture_for(model_type), model_type)

    def check(self, model, recipe, kind) -> None:
        """The targets match layers, and the rank is no larger than the narrowest of them (a
        rank beyond it adds parameters and no expressiveness)."""
        self.config(model, recipe, kind)
        modules = dict(model.named_modules())
        layers = [name for names in self.targets(model, recipe).values() for name in names]
        narrowest = min(min(modules[name].weight.shape) for name in layers)
        if recipe.lora.r > narrowest:
            from loraft.errors import LoraftError

            raise LoraftError(
                f"lora.r: {recipe.lora.r} is more than the narrowest adapted layer's width ({narrowest}); "
                f"use {narrowest} or less"
            )

    def apply(self, model, recipe, kind):
        from peft import get_peft_model

        return get_peft_model(model, self.config(model, recipe, kind))

    def describe(self, model, recipe) -> list[str]:
        from loraft.models.targets import describe_targets

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return [f"lora targets: {describe_targets(self.targets(base, recipe))}"]

    def label(self, recipe) -> str:
        """`lora r=8 attention`, `dora r=8 all-linear`, `rslora r=64 mlp lora+16`."""
        plus = f" lora+{recipe.lora.plus_lr_ratio:g}" if recipe.lora.plus_lr_ratio else ""
        return f"{self._variant(recipe)} r={recipe.lora.r} {self._targets_label(recipe)}{plus}"

    def settings(self, recipe) -> dict:
        return {"rank": recipe.lora.r, "targets": self._targets_label(recipe)}

    def frontier_line(self, recipe) -> str | None:
        """One line a variant on one set of targets: its ranks along it."""
        plus = f" lora+{recipe.lora.plus_lr_ratio:g}" if recipe.lora.plus_lr_ratio else ""
        return f"{self._variant(recipe)} {self._targets_label(recipe)}{plus}"

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

    @staticmethod
    def _variant(recipe) -> str:
        """lora, dora, rslora or rsdora."""
        return ("rs" if recipe.lora.use_rslora else "") + ("dora" if recipe.lora.use_dora else "lora")

    def save(self, directory: Path, model, state_dict: dict) -> None:
        # save_embedding_layers=False: "auto" would look the base model up on the hub.
        model.save_pretrained(directory, state_dict=state_dict, save_embedding_layers=False)

    def load(self, base, directory: Path, kind: str):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def exported(self, model, merge: bool):
        return (model.merge_and_unload(), False) if merge else (model, True)

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
            f"targets {self._targets_label(recipe, ', ')}" + (f"; {', '.join(variants)}" if variants else "")
        ]

    @staticmethod
    def _targets_label(recipe, joiner: str = "+") -> str:
        targets = recipe.lora.target_modules
        return joiner.join(targets) if targets else "default"
