"""What every PEFT adapter method shares: targets resolved on the model, a PEFT adapter folder as
its checkpoint (`PeftModel.from_pretrained` loads it), and `export --merge` to fold it in."""

from __future__ import annotations

from pathlib import Path

from loraft.methods.base import Method


class AdapterMethod(Method):
    """A PEFT tuner. Subclasses give `section` and `peft_config` (and `default_targets` where not LoRA's)."""

    def requested_targets(self, recipe) -> list[str] | None:
        """The recipe's `<section>.target_modules`; None: the family's default."""
        return getattr(recipe, self.section).target_modules

    def default_targets(self, architecture, model_type: str) -> list[str] | None:
        """The targets when the recipe names none: the family's LoRA defaults (PEFT's)."""
        return list(architecture.default_targets) if architecture else None

    def targets(self, model, recipe) -> dict[str, list[str]]:
        """The recipe's targets (the family's defaults when it names none) -> the layers matched."""
        from loraft.errors import LoraftError
        from loraft.models.loading import architecture_of
        from loraft.models.targets import resolve_targets

        architecture = architecture_of(model)
        targets = self.requested_targets(recipe)
        if targets is None:
            targets = self.default_targets(architecture, model.config.model_type)
            if targets is None:
                raise LoraftError(
                    f"{self.section}.target_modules: loraft has no default targets for "
                    f"'{model.config.model_type}' models; name its layers, or use all-linear"
                )
        return resolve_targets(model, list(targets), architecture)

    def check_before_loading(self, recipe, model_type, known) -> None:
        from loraft.models import architecture_for
        from loraft.models.targets import check_target_names

        targets = self.requested_targets(recipe)
        if targets is not None and known:
            check_target_names(targets, architecture_for(model_type), model_type, self.section)

    def check(self, model, recipe, kind) -> None:
        self.peft_config(model, recipe, kind)

    def apply(self, model, recipe, kind):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, recipe, kind))

    def describe(self, model, recipe) -> list[str]:
        from loraft.models.targets import describe_targets

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return [f"{self.name} targets: {describe_targets(self.targets(base, recipe))}"]

    def settings(self, recipe) -> dict:
        return {"targets": self.targets_label(recipe)}

    def save(self, directory: Path, model, state_dict: dict) -> None:
        # save_embedding_layers=False: "auto" would look the base model up on the hub.
        model.save_pretrained(directory, state_dict=state_dict, save_embedding_layers=False)

    def load(self, base, directory: Path, kind: str):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)

    def exported(self, model, merge: bool):
        return (model.merge_and_unload(), False) if merge else (model, True)

    def task_type(self, kind: str):
        from peft import TaskType

        return TaskType.SEQ_CLS if kind == "classification" else TaskType.CAUSAL_LM

    def targets_label(self, recipe, joiner: str = "+") -> str:
        targets = self.requested_targets(recipe)
        return joiner.join(targets) if targets else "default"
