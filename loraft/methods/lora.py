"""`lora`: PEFT LoRA adapters on the recipe's target layers (see `loraft.models.targets`), and
its variants: rsLoRA, DoRA, LoRA+ and the PiSSA / OLoRA initialisations.

For classification the head trains too and is saved with the adapter (`modules_to_save`,
PEFT's SEQ_CLS task). A checkpoint is a PEFT adapter folder; `export --merge` folds it in.

PiSSA and OLoRA start the adapter from the base weights and subtract that start from them (the
base becomes a residual). Their checkpoints are saved converted to a plain LoRA adapter of twice
the rank that applies to the *original* base (W + BA - B0A0 = W_res + BA), so `eval`, `export`
and `generate` load them like any other; a resumed run recomputes the same residual.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraft.methods.adapter import AdapterMethod

INITS = {"kaiming": True, "gaussian": "gaussian"}  # loraft's name -> PEFT's init_lora_weights
# measured on PEFT 0.21.2: OLoRA's QR ignores fan_in_fan_out, and the first forward fails
OLORA_ON_CONV1D = (
    "lora.init: olora cannot start on layers stored transposed (GPT-2's Conv1D: PEFT's OLoRA "
    "gives A and B the wrong shapes there); use pissa, or a family with nn.Linear layers"
)


class LoraMethod(AdapterMethod):
    name = "lora"
    summary = "low-rank adapters (lora: section)"
    section = "lora"

    def check_before_loading(self, recipe, model_type, known) -> None:
        from loraft.errors import LoraftError
        from loraft.models import architecture_for

        super().check_before_loading(recipe, model_type, known)
        family = architecture_for(model_type) if known else None
        if recipe.lora.init == "olora" and family is not None and family.transposed_weights:
            raise LoraftError(OLORA_ON_CONV1D)

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
            init_lora_weights=INITS.get(recipe.lora.init, recipe.lora.init),
            fan_in_fan_out=stores_transposed(model, layers),
        )

    def apply(self, model, recipe, kind):
        """The adapted model; for an initialisation that moves the base (PiSSA, OLoRA), with its
        starting A and B kept (`save` converts the adapter against them)."""
        peft_model = super().apply(model, recipe, kind)
        if recipe.lora.init not in INITS:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(peft_model)
            peft_model.loraft_initial_adapter = {
                key: value.detach().clone() for key, value in state.items() if _is_lora_matrix(key)
            }
        return peft_model

    def save(self, directory: Path, model, state_dict: dict) -> None:
        super().save(directory, model, state_dict)
        initial = getattr(model, "loraft_initial_adapter", None)
        if initial is not None:
            _convert_to_plain_lora(directory, initial)

    def check(self, model, recipe, kind) -> None:
        """The targets match layers, and the rank is no larger than the narrowest of them (a
        rank beyond it adds parameters and no expressiveness)."""
        from loraft.errors import LoraftError
        from loraft.models.targets import layer_shape, stores_transposed

        self.peft_config(model, recipe, kind)
        modules = dict(model.named_modules())
        layers = [name for names in self.targets(model, recipe).values() for name in names]
        if recipe.lora.init == "olora" and stores_transposed(model, layers):
            raise LoraftError(OLORA_ON_CONV1D)
        narrowest = min(min(layer_shape(modules[name])) for name in layers)
        if recipe.lora.r > narrowest:
            raise LoraftError(
                f"lora.r: {recipe.lora.r} is more than the narrowest adapted layer's width ({narrowest}); "
                f"use {narrowest} or less"
            )

    def label(self, recipe) -> str:
        """`lora r=8 attention`, `dora r=8 all-linear`, `rslora r=64 mlp pissa lora+16`."""
        return f"{self._variant(recipe)} r={recipe.lora.r} {self.targets_label(recipe)}{self._extras(recipe)}"

    def settings(self, recipe) -> dict:
        return {"rank": recipe.lora.r, "targets": self.targets_label(recipe)}

    def frontier_line(self, recipe) -> str | None:
        """One line a variant on one set of targets: its ranks along it."""
        return f"{self._variant(recipe)} {self.targets_label(recipe)}{self._extras(recipe)}"

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
            *([f"{lora.init} initialisation{self._converted(lora)}"] if lora.init != "kaiming" else []),
        ]
        return [
            f"LoRA: rank {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g}, "
            f"targets {self.targets_label(recipe, ', ')}" + (f"; {', '.join(variants)}" if variants else "")
        ]

    @staticmethod
    def _variant(recipe) -> str:
        """lora, dora, rslora or rsdora."""
        return ("rs" if recipe.lora.use_rslora else "") + ("dora" if recipe.lora.use_dora else "lora")

    @staticmethod
    def _converted(lora) -> str:
        return "" if lora.init in INITS else f" (saved converted to rank {2 * lora.r}, for the original base)"

    @staticmethod
    def _extras(recipe) -> str:
        """` pissa lora+16`: the initialisation (unless the default) and LoRA+."""
        init = f" {recipe.lora.init}" if recipe.lora.init != "kaiming" else ""
        return init + (f" lora+{recipe.lora.plus_lr_ratio:g}" if recipe.lora.plus_lr_ratio else "")


def _is_lora_matrix(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def _convert_to_plain_lora(directory: Path, initial: dict) -> None:
    """Rewrite a saved PiSSA / OLoRA adapter as a plain LoRA one for the original base:
    A' = [A; A0], B' = [B, -B0], so B'A' = BA - B0A0 at twice the rank and the same scale.
    By hand: PEFT's own conversion (`path_initial_model_for_weight_conversion`, 0.21.2) keeps
    only the A and B matrices (a classifier head or DoRA's magnitudes would be lost) and cannot
    take the gathered state dict a sharded run saves from."""
    import torch
    from safetensors.torch import load_file, save_file

    weights_path, config_path = directory / "adapter_model.safetensors", directory / "adapter_config.json"
    weights = load_file(weights_path)
    for key, start in initial.items():
        trained, start = weights[key], start.to(weights[key].dtype)
        is_a = ".lora_A." in key
        weights[key] = torch.cat([trained, start], 0) if is_a else torch.cat([trained, -start], 1)
    weights = {key: value.contiguous() for key, value in weights.items()}
    save_file(weights, weights_path, metadata={"format": "pt"})
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["r"] *= 2
    config["lora_alpha"] *= 2**0.5 if config.get("use_rslora") else 2  # the same scale at 2r
    config["init_lora_weights"] = True
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
