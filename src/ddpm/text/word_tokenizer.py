"""A word-level tokenizer for text encoders trained from scratch on a captioned dataset.

The vocabulary is the set of words of the training captions (lower-cased, punctuation stripped), after four
special tokens: `<pad>` 0, `<unk>` 1, `<bos>` 2, `<eos>` 3. A prompt becomes
`<bos> words… <eos> <pad>…` of fixed length `context_length`; words beyond `context_length - 2` are dropped
with a warning that says how many, and words outside the vocabulary become `<unk>` with a warning naming
them. The vocabulary is a plain list of strings, so it travels inside a model file's JSON metadata.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .clip_tokenizer import Tokenized

__all__ = ["WordTokenizer", "SPECIAL_TOKENS", "words_of"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words_of(text: str) -> list[str]:
    """Lower-cased words of `text`, punctuation and extra spaces removed."""
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Words -> ids over a fixed vocabulary; `tok(prompts) -> Tokenized(input_ids [B, L], mask [B, L], …)`."""

    def __init__(self, vocab: Sequence[str], *, context_length: int = 16):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a word vocabulary must start with the special tokens {list(SPECIAL_TOKENS)}; build one "
                "with WordTokenizer.from_captions(captions)"
            )
        if len(set(vocab)) != len(vocab):
            dup = next(w for w, n in Counter(vocab).items() if n > 1)
            raise ValueError(f"the vocabulary lists {dup!r} twice; every word must appear once")
        if int(context_length) != context_length or context_length < 3:
            raise ValueError(
                f"context_length must be an integer >= 3 (<bos>, one word, <eos>); got {context_length!r}"
            )
        self.vocab = vocab
        self.context_length = int(context_length)
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (self.ids[t] for t in SPECIAL_TOKENS)

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], *, context_length: int = 16, min_count: int = 1
    ) -> WordTokenizer:
        """The vocabulary of `captions`: special tokens, then the words seen `min_count`+ times, sorted."""
        counts = Counter(w for c in captions for w in words_of(c))
        words = sorted(w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS)
        if not words:
            raise ValueError("the captions hold no words; a text model needs a captioned dataset")
        return cls(list(SPECIAL_TOKENS) + words, context_length=context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def max_words(self) -> int:
        """Words that fit between `<bos>` and `<eos>`."""
        return self.context_length - 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the vocabulary travels in the model file)."""
        return {"type": "word", "vocab": list(self.vocab), "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        if d.get("type", "word") != "word" or "vocab" not in d:
            raise ValueError(
                f"not a word-tokenizer description (keys {sorted(d)}); expected type 'word' and vocab"
            )
        return cls(d["vocab"], context_length=int(d.get("context_length", 16)))

    def encode(self, text: str) -> list[int]:
        """Ids of the words of `text` (no special tokens, no truncation); unknown words give `<unk>`."""
        return [self.ids.get(w, self.unk_id) for w in words_of(text)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Words of `ids`, special tokens other than `<unk>` left out."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.vocab[i] for i in ids if i not in skip)

    def tokenize(self, prompts: str | Sequence[str], *, warn: bool = True) -> Tokenized:
        """`<bos> words <eos> <pad>…` `[B, context_length]`; warns about truncation and unknown words."""
        if isinstance(prompts, str):
            prompts = [prompts]
        rows, masks, dropped, unknown = [], [], [], []
        for p in prompts:
            words = words_of(p)
            unknown += [w for w in words if w not in self.ids]
            ids = [self.ids.get(w, self.unk_id) for w in words]
            kept = ids[: self.max_words]
            dropped.append(len(ids) - len(kept))
            row = [self.bos_id, *kept, self.eos_id]
            masks.append([1] * len(row) + [0] * (self.context_length - len(row)))
            rows.append(row + [self.pad_id] * (self.context_length - len(row)))
        if warn and unknown:
            names = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            warnings.warn(
                f"words not in the text encoder's vocabulary were read as <unk>: {names}; the model knows "
                f"{self.vocab_size - len(SPECIAL_TOKENS)} words (see its tokenizer's vocab)",
                stacklevel=2,
            )
        if warn and any(dropped):
            worst = max(dropped)
            n = sum(1 for d in dropped if d)
            warnings.warn(
                f"{n} prompt(s) longer than the text encoder's context of {self.max_words} words were "
                f"truncated; "
                f"{worst} word(s) dropped from the longest (shorten the prompt to keep them)",
                stacklevel=2,
            )
        return Tokenized(
            torch.tensor(rows, dtype=torch.int64), torch.tensor(masks, dtype=torch.int64), dropped
        )

    def __call__(self, prompts: str | Sequence[str], *, warn: bool = True) -> Tokenized:
        return self.tokenize(prompts, warn=warn)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
