"""Gemma: Llama's layout with a GeGLU MLP, embeddings scaled by the square root of the width
and tied to the output layer, and a head size of its own (256 unless set: a scratch config
sets width / heads)."""

from __future__ import annotations

from dataclasses import replace

from loraft.models.llama import ARCHITECTURE as LLAMA

ARCHITECTURE = replace(LLAMA, model_type="gemma", family="Gemma", scratch_head_dim=True)
