"""Qwen2: Llama's layout with biases on the query, key and value products (inside the
products: nothing changes for targets, packing or the loss)."""

from __future__ import annotations

from dataclasses import replace

from loraft.models.llama import ARCHITECTURE as LLAMA

ARCHITECTURE = replace(LLAMA, model_type="qwen2", family="Qwen2")
