"""What every fine-tuning method provides (see `loraft.methods`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from loraft.recipe import Recipe


class Method:
    """A fine-tuning method. The defaults are full fine-tuning's: every weight trains, a
    checkpoint is a whole model, nothing is merged."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `loraft fields`
    section: ClassVar[str | None] = None  # the recipe section of its own settings (`lora`)
    is_baseline: ClassVar[bool] = False  # what `compare` measures every other method against
    needs_base: ClassVar[bool] = True  # its checkpoints are applied on top of the base weights
    trains_layers_below_head: ClassVar[bool] = True  # activations of every layer kept for backward
    packing_problem: ClassVar[str | None] = None  # why it cannot train on packed rows, if so
    merge_refusal: ClassVar[str | None] = None  # why `export --merge` cannot fold it in, if so

    def recipe_problem(self, recipe: Recipe) -> str | None:
        """A reason the method cannot serve this recipe's task, or None."""
        return None

    def check_before_loading(self, recipe: Recipe, model_type: str | None, known: bool) -> None:
        """Raise what the recipe's settings get wrong about the model's family, from its config
        alone (`known`: the config could be read; a hub model not yet cached is checked later)."""

    def check(self, model: torch.nn.Module, recipe: Recipe, kind: str) -> None:
        """Raise now, as one line, what `apply` would raise on this model."""

    def apply(self, model: torch.nn.Module, recipe: Recipe, kind: str) -> torch.nn.Module:
        """The model ready to train: only what the method trains requires gradients."""
        raise NotImplementedError

    def extra_positions(self, recipe: Recipe) -> int:
        """Positions the method adds before every row (prompt tuning's virtual tokens)."""
        return 0

    def check_steps(self, recipe: Recipe, total_steps: int) -> None:
        """Raise what is wrong with a run of `total_steps` steps, before its folder is made."""

    def start_training(self, model: torch.nn.Module, recipe: Recipe, total_steps: int) -> None:
        """Called once the run's step count is known, before its first step."""

    def regulariser(self, model: torch.nn.Module) -> torch.Tensor | None:
        """A term added once to every optimizer step's loss; None: the token loss alone."""
        return None

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Called after each optimizer step, before the gradients are cleared; what it returns
        is logged with the step."""
        return {}

    def training_state(self, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What an exact resume needs beyond the weights and the optimizer: (tensors, JSON facts)."""
        return {}, {}

    def load_training_state(
        self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], facts: dict[str, Any]
    ) -> None:
        """Restore what `training_state` saved."""

    def describe(self, model: torch.nn.Module, recipe: Recipe) -> list[str]:
        """Lines printed at the start of a run and in `loraft plan` (which layers it adapts)."""
        return []

    def label(self, recipe: Recipe) -> str:
        """How reports name a run of this method (`lora r=8 attention`)."""
        return self.name

    def settings(self, recipe: Recipe) -> dict[str, Any]:
        """The method's own settings that tell its runs apart (rank, targets), for reports."""
        return {}

    def frontier_line(self, recipe: Recipe) -> str | None:
        """Runs on one line of the frontier plot (a method's ranks on one set of targets);
        None: a single marked point."""
        return None

    def save(self, directory: Path, model: torch.nn.Module, state_dict: dict) -> None:
        """Write the trained weights of `model` (from `state_dict`) into `directory`."""
        model.save_pretrained(directory, state_dict=state_dict)

    def load(self, base: torch.nn.Module | None, directory: Path, kind: str) -> torch.nn.Module:
        """The trained model of a checkpoint folder (on top of `base` where `needs_base`)."""
        raise NotImplementedError

    def exported(self, model: torch.nn.Module, merge: bool) -> tuple[torch.nn.Module, bool]:
        """(what `loraft export` saves, whether it is an adapter for the base)."""
        return model, False

    def card_facts(self, recipe: Recipe) -> list[str]:
        """The model card's lines about the method's settings."""
        return []

    def optimizer(self, model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
        """AdamW over what trains: no weight decay on biases and norms (1-D tensors); fused, one
        kernel for all parameters (on a CPU, 8x faster than the per-tensor loop)."""
        import torch

        decay, no_decay = [], []
        for parameter in model.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": recipe.train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=recipe.train.lr, fused=True)
