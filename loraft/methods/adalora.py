"""`adalora`: AdaLoRA (Zhang et al. 2023) starts every target layer at rank `init_r` in SVD form
(P diag(E) Q) and, by a cubic schedule over the run, prunes the least important triplets until
the layers keep `target_r` on average: the rank goes where the task needs it. PEFT's AdaLoRA.

Two things PEFT leaves to the training loop are done here:
- the orthogonality penalty on P and Q, which PEFT adds only to a `.loss` the model returns
  (loraft computes its loss from the hidden states, so it would be skipped): `regulariser`;
- `update_and_allocate` after every optimizer step (the gradients still there), with the
  run's step count as the schedule's `total_step`. The current rank pattern is applied after
  every step, so a checkpoint saved at any step is the model that was evaluated.
The importance scores are part of the training state, so a resumed run prunes as the whole one.
A checkpoint is a PEFT adapter (pruned ranks dropped); `export --merge` folds it in.
"""

from __future__ import annotations

from loraft.methods.adapter import AdapterMethod

SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # PEFT's RankAllocator: the state a resume needs


class AdaloraMethod(AdapterMethod):
    name = "adalora"
    summary = "AdaLoRA: LoRA whose rank budget is pruned to the layers that need it (adalora: section)"
    section = "adalora"

    def peft_config(self, model, recipe, kind, total_steps: int | None = None):
        """PEFT's config; before the run's length is known, the shortest schedule PEFT takes."""
        from peft import AdaLoraConfig

        from loraft.models.targets import peft_targets, stores_transposed

        section = recipe.adalora
        layers = peft_targets(self.targets(model, recipe))
        return AdaLoraConfig(
            task_type=self.task_type(kind),
            init_r=section.init_r,
            target_r=section.target_r,
            lora_alpha=section.alpha,
            lora_dropout=section.dropout,
            tinit=section.tinit,
            tfinal=section.tfinal,
            deltaT=section.deltaT,
            beta1=section.beta1,
            beta2=section.beta2,
            orth_reg_weight=section.orth_reg_weight,
            total_step=total_steps or section.tinit + section.tfinal + 1,
            target_modules=layers,
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def check_steps(self, recipe, total_steps: int) -> None:
        from loraft.errors import LoraftError

        section = recipe.adalora
        if section.tinit + section.tfinal >= total_steps:
            raise LoraftError(
                f"adalora: tinit ({section.tinit}) + tfinal ({section.tfinal}) leave none of this "
                f"run's {total_steps} steps to prune ranks in; lower them, or train longer"
            )

    def start_training(self, model, recipe, total_steps: int) -> None:
        self.check_steps(recipe, total_steps)
        _allocator(model).set_total_step(total_steps)

    def regulariser(self, model):
        """PEFT's penalty, `orth_reg_weight` x the mean over P and Q of ||PP^T - I||_F, written
        out because PEFT adds it only to a returned `.loss` (see the module doc)."""
        import torch

        tuner = model.base_model
        adapter = tuner.trainable_adapter_name
        weight = tuner.peft_config[adapter].orth_reg_weight
        norms = []
        for name, p in tuner.model.named_parameters():
            if adapter in name and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                norms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=cov.device)))
        return weight * torch.stack(norms).mean()

    def after_optimizer_step(self, model, step: int) -> dict[str, float]:
        tuner = model.base_model
        tuner.update_and_allocate(step)
        pattern = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern
        if pattern:
            tuner.rankallocator.mask_using_rank_pattern(tuner.model, pattern)
        return {"rank_budget": self.rank_budget(model)}

    def rank_budget(self, model) -> int:
        """The ranks left over all adapted layers (every triplet until the first pruning)."""
        tuner = model.base_model
        pattern = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern
        if pattern:
            return sum(sum(kept) for kept in pattern.values())
        return _allocator(model).init_bgt

    def training_state(self, model):
        allocator = _allocator(model)
        tensors = {
            f"{kind}/{name}": value.detach().cpu().contiguous()
            for kind in SCORES
            for name, value in getattr(allocator, kind).items()
        }
        config = model.base_model.peft_config[model.base_model.trainable_adapter_name]
        return tensors, {"rank_pattern": config.rank_pattern, "scored": bool(tensors)}

    def load_training_state(self, model, tensors, facts) -> None:
        """Restore the scores and the rank pattern, each checked against the model first (a
        state folder may come from someone else)."""
        from loraft.errors import LoraftError

        tuner, allocator = model.base_model, _allocator(model)
        adapter = tuner.trainable_adapter_name
        parameters = dict(tuner.model.named_parameters())
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            if kind not in SCORES or name not in parameters or value.shape != parameters[name].shape:
                raise LoraftError(f"AdaLoRA's saved score '{key}' does not match this model")
        names = [{key.partition("/")[2] for key in tensors if key.startswith(f"{kind}/")} for kind in SCORES]
        if any(kinds != names[0] for kinds in names) or (not tensors and facts.get("scored")):
            raise LoraftError("AdaLoRA's saved scores are incomplete (each kind for the same weights)")
        pattern = facts.get("rank_pattern")
        if pattern is not None:
            ranks = {
                name.replace(f".{adapter}", ""): len(p) for name, p in parameters.items() if "lora_E" in name
            }
            given = {name.replace(f".{adapter}", ""): kept for name, kept in dict(pattern).items()}
            if {name: len(kept) for name, kept in given.items()} != ranks or not all(
                isinstance(keep, bool) for kept in given.values() for keep in kept
            ):
                raise LoraftError("AdaLoRA's saved rank pattern does not match this model's adapted layers")
        allocator.reset_ipt()
        device = next(model.parameters()).device
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            getattr(allocator, kind)[name] = value.to(device)
        tuner.peft_config[adapter].rank_pattern = pattern

    def load(self, base, directory, kind: str):
        import warnings

        with warnings.catch_warnings():
            # PEFT 0.21.2 checks AdaLoRA's rank pattern (parameter names) as LoRA's (module
            # names) and warns that none matched; its AdaLoRA loader then applies it rightly.
            warnings.filterwarnings("ignore", "The following rank_pattern keys", RuntimeWarning)
            return super().load(base, directory, kind)

    def label(self, recipe) -> str:
        section = recipe.adalora
        return f"adalora r={section.init_r}->{section.target_r} {self.targets_label(recipe)}"

    def settings(self, recipe) -> dict:
        return {"rank": recipe.adalora.target_r, "targets": self.targets_label(recipe)}

    def frontier_line(self, recipe) -> str | None:
        return f"adalora {self.targets_label(recipe)}"  # its final ranks along the line

    def card_facts(self, recipe) -> list[str]:
        s = recipe.adalora
        return [
            f"AdaLoRA: rank {s.init_r} pruned to {s.target_r} on average (tinit {s.tinit}, tfinal "
            f"{s.tfinal}, deltaT {s.deltaT}), alpha {s.alpha:g}, orthogonality weight "
            f"{s.orth_reg_weight:g}, targets {self.targets_label(recipe, ', ')}"
        ]


def _allocator(model):
    return model.base_model.rankallocator
