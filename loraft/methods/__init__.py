"""Fine-tuning methods, one module each: what a method trains, saves, loads, merges and is called.

Every place that depends on the method asks its `Method` object (`METHODS[recipe.method]`);
nothing else compares the method's name. Adding a method is one module here and one line in
`METHODS`. No torch at import time: the recipe schema reads the names.
"""

from __future__ import annotations

from loraft.methods.adalora import AdaloraMethod
from loraft.methods.base import Method
from loraft.methods.full import FullMethod
from loraft.methods.head import HeadMethod
from loraft.methods.ia3 import IA3Method
from loraft.methods.lora import LoraMethod
from loraft.methods.prompt_tuning import PromptTuningMethod
from loraft.methods.vera import VeraMethod

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        FullMethod(),
        LoraMethod(),
        HeadMethod(),
        IA3Method(),
        VeraMethod(),
        AdaloraMethod(),
        PromptTuningMethod(),
    )
}


def method_of(recipe) -> Method:
    """The method object of a recipe."""
    return METHODS[recipe.method]


def other_sections(method_name: str) -> dict[str, str]:
    """The recipe sections of every method but `method_name`, each -> the method it belongs to:
    a recipe of that method must not set them."""
    return {
        method.section: method.name
        for method in METHODS.values()
        if method.section and method.name != method_name
    }


def apply_method(model, recipe, kind: str):
    """The model ready to train by the recipe's method; its dropout layers (the method's too)
    draw cheaper masks (`loraft.dropout`)."""
    from loraft.dropout import use_cheap_dropout

    return use_cheap_dropout(method_of(recipe).apply(model, recipe, kind))


__all__ = ["METHODS", "Method", "apply_method", "method_of", "other_sections"]
