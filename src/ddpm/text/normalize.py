"""Text cleaning and pre-tokenisation of the CLIP tokenizer (Radford et al. 2021, "CLIP", Sec. 2.4).

We match what Stable Diffusion users run: the tokenizer that `transformers` builds from a
`tokenizer/` folder (its Rust backend), which differs from the original CLIP code in three ways:
no ftfy/HTML clean-up, lowercasing char by char (no Greek final-sigma rule), and a second,
GPT-2-style split inside every piece. The steps, in order:

| step            | function          | what it does                                                   |
| --------------- | ----------------- | -------------------------------------------------------------- |
| special split   | `split_specials`  | special tokens written in the text are cut out and become ids  |
| normalise       | `normalize`       | NFC, every whitespace run -> one space, lowercase per char     |
| pre-tokenise    | `pretokenize`     | CLIP's pattern (below), then the byte-level (GPT-2) split      |

CLIP's pattern: `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`.

Python's `re` has no `\\p{L}` / `\\p{N}`, so the pattern is a small scanner over Unicode general
categories (`unicodedata`), and "whitespace" is the Unicode White_Space property (what the
regex engine behind `transformers` means by `\\s`; Python's `str.isspace` also counts U+001C-U+001F,
which CLIP does not). Characters newer than Python's Unicode database (`unicodedata.unidata_version`)
are unknown to us and may be classified differently from a newer reference.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

__all__ = ["WHITESPACE", "SPECIAL_PIECES", "CONTRACTIONS", "split_specials", "normalize", "pretokenize"]

# The Unicode White_Space property (PropList.txt): the meaning of `\s` in the reference pattern.
WHITESPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)]
    + ["\u0020", "\u0085", "\u00a0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]
    + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
)

# Pieces the CLIP pattern matches whole; the byte-level split after it cuts each into three.
SPECIAL_PIECES = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")

_SPACE, _LETTER, _NUMBER, _OTHER = 0, 1, 2, 3


@lru_cache(maxsize=65536)
def _char_class(c: str) -> int:
    """Whitespace, letter (\\p{L}), number (\\p{N}) or anything else, for one character."""
    if c in WHITESPACE:
        return _SPACE
    cat = unicodedata.category(c)
    if cat[0] == "L":
        return _LETTER
    if cat[0] == "N":
        return _NUMBER
    return _OTHER


def split_specials(text: str, specials: tuple[str, ...]) -> list[tuple[str, bool]]:
    """Cut `text` at verbatim `specials` (leftmost, then longest match first): `[(part, is_special)]`."""
    ordered = sorted((s for s in specials if s), key=len, reverse=True)
    out: list[tuple[str, bool]] = []
    start = i = 0
    while i < len(text):
        hit = next((s for s in ordered if text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((hit, True))
        i += len(hit)
        start = i
    if start < len(text):
        out.append((text[start:], False))
    return out


def normalize(text: str) -> str:
    """NFC, whitespace runs to one space, then lowercase each character on its own."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    in_space = False
    for c in text:
        if c in WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
            continue
        in_space = False
        out.append(c.lower())
    return "".join(out)


def _scan_pattern(text: str) -> list[str]:
    """All matches of the CLIP pattern in `text`, in order (whitespace and nothing else is dropped)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        special = next((s for s in SPECIAL_PIECES if text.startswith(s, i)), None)
        if special is not None:
            pieces.append(special)
            i += len(special)
            continue
        if text[i] == "'":
            contraction = next((s for s in CONTRACTIONS if text.startswith(s, i)), None)
            if contraction is not None:
                pieces.append(contraction)
                i += len(contraction)
                continue
        kind = _char_class(text[i])
        if kind == _SPACE:
            i += 1
        elif kind == _NUMBER:
            pieces.append(text[i])
            i += 1
        else:  # a run of letters, or a run of anything that is neither letter, number nor space
            j = i + 1
            while j < n and _char_class(text[j]) == kind:
                j += 1
            pieces.append(text[i:j])
            i = j
    return pieces


def pretokenize(text: str) -> list[str]:
    """Split normalised text into the words BPE sees (the CLIP pattern, then the byte-level split)."""
    pieces: list[str] = []
    for piece in _scan_pattern(text):
        if piece in SPECIAL_PIECES:
            # The GPT-2 pattern of the byte-level step separates the letters from "<|" and "|>".
            pieces.extend(("<|", piece[2:-2], "|>"))
        else:
            pieces.append(piece)
    return pieces
