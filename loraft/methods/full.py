"""`full`: every weight trains; a checkpoint is the whole model."""

from __future__ import annotations

from pathlib import Path

from loraft.methods.base import Method


class FullMethod(Method):
    name = "full"
    summary = "every weight"
    is_baseline = True
    needs_base = False

    def apply(self, model, recipe, kind):
        model.requires_grad_(True)
        return model

    def load(self, base, directory: Path, kind: str):
        from loraft.errors import LoraftError
        from loraft.models.loading import auto_class, with_fast_kernels

        try:
            return with_fast_kernels(auto_class(kind).from_pretrained(directory))
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise LoraftError(f"{directory}: cannot load the checkpoint: {reason}") from None
