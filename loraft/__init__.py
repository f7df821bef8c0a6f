"""loraft: fine-tune GPT-2 with LoRA or full fine-tuning, and see what LoRA bought you."""

import logging
import os

# oneDNN (PyTorch's bf16 matrix products on CPUs) keeps a compiled kernel for every distinct
# product shape, up to 1,024; packed rows change length every step, so a bf16 run's memory grew
# by about 47 MB a step (GPT-2 small). A layer's products cycle through fewer than 16 shapes:
# LoRA on every linear layer ran at half speed with 8 kernels kept and at full speed with 16,
# whose peak is 10% below 64's (bf16 LoRA on c_attn: 2,066 MB against 2,309). Read when torch
# first uses oneDNN, so set on importing loraft; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.recipe_files import load_recipe

# PEFT imports bitsandbytes wherever it is installed, and bitsandbytes then warns on every
# command that its CPU inference kernel (fetched from the hub) is missing: loraft does not use
# that kernel (see loraft.models.quantize).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["LoraftError", "Recipe", "load_recipe"]
__version__ = "0.2.0"
