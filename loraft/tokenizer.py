"""Tokenizers: load one by hub id or path, or train a GPT-2-style byte-level BPE on texts; and
the one rule by which every task and `generate` turn text into token ids.

The rule: special tokens go where the tokenizer itself puts them on a whole text (Llama's
BOS once at the start; GPT-2 adds none), never around each piece; a literal special token in
the data ("<|endoftext|>") is plain text; a training example ends with EOS, which is trained.
"""

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
    except Exception as error:  # a damaged tokenizer.json raises what its parser raises
        reason = _first_line(error)
        hint = "" if is_local(name) else offline_hint()  # a damaged local file is not about the hub
        raise LoraftError(f"model.tokenizer: cannot load '{name}': {reason}{hint}") from None
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


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (Llama: [BOS], []; GPT-2: [], [])."""
    cached = getattr(tokenizer, "_loraft_special_tokens", None)
    if cached is not None:
        return cached
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    around = (list(full[:start]), list(full[start + len(plain) :]))
    tokenizer._loraft_special_tokens = around
    return around


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A text's ids without special tokens; "<|endoftext|>" written in the data stays text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A prompt to continue: the tokenizer's leading special tokens, then the text (an empty
    text starts from BOS, or EOS where there is none, as GPT-2 does)."""
    leading, _ = special_tokens_around(tokenizer)
    ids = leading + encode_text(tokenizer, text)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ids or [start]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, target: str
) -> tuple[list[int], list[bool]]:
    """A training text's ids and, for each, whether it is trained (a target token). The
    tokenizer's leading specials, the prompt (not trained), the target, then EOS (trained:
    the model learns to stop) and the tokenizer's trailing specials. Prompt and target are
    tokenized apart, so the target's tokens are the same with or without its prompt."""
    leading, trailing = special_tokens_around(tokenizer)
    prompt_ids = encode_text(tokenizer, prompt) if prompt else []
    target_ids = encode_text(tokenizer, target)
    ending = trailing if tokenizer.eos_token_id in trailing else [tokenizer.eos_token_id, *trailing]
    ids = [*leading, *prompt_ids, *target_ids, *ending]
    trained = [False] * (len(leading) + len(prompt_ids)) + [True] * (len(target_ids) + len(ending))
    return ids, trained


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
