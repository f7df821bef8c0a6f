"""`prompt_tuning`: prompt tuning (Lester et al. 2021) trains only the embeddings of
`num_virtual_tokens` virtual tokens that PEFT puts before every row; the model is untouched.

The model's outputs then start with the virtual positions: loraft's loss keeps the last
`input_ids` positions (`loraft.tasks.causal_lm`), so the targets line up as without them. A
packed row holds several examples but would get one set of virtual tokens, so these runs train
on padded rows (said when the run starts). Causal-LM tasks only: PEFT's classifier on a
prompt-tuned model pools its last position, padding in a right-padded batch. Nothing to merge:
`export --merge` is refused in one line; the adapter is the export.
"""

from __future__ import annotations

from loraft.methods.adapter import AdapterMethod

PEFT_INITS = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB", "text": "TEXT"}


class PromptTuningMethod(AdapterMethod):
    name = "prompt_tuning"
    summary = "prompt tuning: trained embeddings of virtual tokens before each row (prompt_tuning: section)"
    section = "prompt_tuning"
    trains_layers_below_head = True  # the gradient reaches the inputs through every layer
    packing_problem = "prompt tuning puts its virtual tokens before each row, and a packed row holds several"
    merge_refusal = (
        "export --merge: prompt tuning adds virtual tokens, not weights: there is nothing to fold "
        "into the model; export the adapter (without --merge)"
    )

    def recipe_problem(self, recipe) -> str | None:
        windowed = [recipe.generation] + [recipe.decoder_settings(name) for name in recipe.study.decoders]
        if any(settings.context_window is not None for settings in windowed):
            return (
                "generation.context_window: the shortened-context decoder cannot carry prompt tuning's "
                "virtual tokens; remove it (and from study.decoders) with method prompt_tuning"
            )
        if recipe.task_kind != "classification":
            return None
        return (
            f"method 'prompt_tuning' is for tasks that generate text; task '{recipe.task}' classifies "
            "(PEFT's classifier would pool a padding position): use lora, ia3 or full"
        )

    def requested_targets(self, recipe) -> list[str] | None:
        return None

    def targets(self, model, recipe) -> dict[str, list[str]]:
        return {}

    def extra_positions(self, recipe) -> int:
        return recipe.prompt_tuning.num_virtual_tokens

    def check_before_loading(self, recipe, model_type, known) -> None:
        from loraft.errors import LoraftError

        if recipe.prompt_tuning.init == "text" and recipe.model.config is not None:
            raise LoraftError(
                "prompt_tuning.init: text needs the tokenizer of a saved model (model.name); "
                "a model trained from scratch has none yet: use random or sample_vocab"
            )

    def peft_config(self, model, recipe, kind):
        from peft import PromptTuningConfig

        section = recipe.prompt_tuning
        text = section.init == "text"
        revision = {"revision": recipe.model.revision} if recipe.model.revision else {}
        return PromptTuningConfig(
            task_type=self.task_type(kind),
            num_virtual_tokens=section.num_virtual_tokens,
            prompt_tuning_init=PEFT_INITS[section.init],
            prompt_tuning_init_text=section.init_text if text else None,
            tokenizer_name_or_path=(recipe.model.tokenizer or recipe.model.name) if text else None,
            tokenizer_kwargs=revision if text else None,
        )

    def describe(self, model, recipe) -> list[str]:
        return [f"prompt tuning: {recipe.prompt_tuning.num_virtual_tokens} virtual tokens before each row"]

    def settings(self, recipe) -> dict:
        return {"targets": f"{recipe.prompt_tuning.num_virtual_tokens} virtual tokens"}  # no rank

    def label(self, recipe) -> str:
        section = recipe.prompt_tuning
        return f"prompt_tuning {section.num_virtual_tokens} tokens {section.init}"

    def frontier_line(self, recipe) -> str | None:
        return f"prompt_tuning {recipe.prompt_tuning.init}"  # its token counts along the line

    def exported(self, model, merge: bool):
        return model, True  # `merge_refusal` stopped a merge before the model was loaded

    def card_facts(self, recipe) -> list[str]:
        section = recipe.prompt_tuning
        start = f"from the text {section.init_text!r}" if section.init == "text" else section.init
        return [f"Prompt tuning: {section.num_virtual_tokens} virtual tokens, initialised {start}"]
