"""Tokenizers: load one by hub id or path, or train a GPT-2-style byte-level BPE on texts."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from loraft.errors import LoraftError
from loraft.hub import go_offline_unless_reachable, is_local, offline_hint

END_OF_TEXT = "<|endoftext|>"


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer by hub id or local path and give it a pad token (GPT-2 has none)."""
    if not is_local(name):
        go_offline_unless_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        reason = _first_line(error)
        raise LoraftError(f"model.tokenizer: cannot load '{name}': {reason}{offline_hint()}") from None
    return ensure_pad_token(tokenizer)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2's scheme) whose only special token is <|endoftext|>."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT
    )
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """GPT-2 ships without a pad token; padding reuses end-of-text, masked out everywhere."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
