"""loraft: fine-tune GPT-2 with LoRA or full fine-tuning, and see what LoRA bought you."""

import os

# oneDNN (PyTorch's bf16 matrix products on CPUs) keeps a compiled kernel for every distinct
# product shape, up to 1,024; packed rows change length every step, so a bf16 run's memory grew
# by about 47 MB a step (GPT-2 small). 64 hold a step's shapes at the same speed. Read when torch
# first uses oneDNN, so set on importing loraft; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.recipe_files import load_recipe

__all__ = ["LoraftError", "Recipe", "load_recipe"]
__version__ = "0.2.0"
