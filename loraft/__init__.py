"""loraft: fine-tune GPT-2 with LoRA or full fine-tuning, and see what LoRA bought you."""

from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.recipe_files import load_recipe

__all__ = ["LoraftError", "Recipe", "load_recipe"]
__version__ = "0.2.0"
