"""Byte-level byte-pair encoding (Sennrich et al. 2016; GPT-2's byte alphabet, Radford et al. 2019).

| name                 | meaning                                                                     |
| -------------------- | --------------------------------------------------------------------------- |
| byte symbol          | one of 256 printable characters standing for one UTF-8 byte                 |
| `</w>`               | end-of-word marker glued to the last symbol of every word (CLIP's variant)  |
| merge rank           | position of a pair in the merge list; lower ranks merge first              |

The CLIP vocabulary is derived from its merge list: 256 byte symbols, the same with `</w>`,
one entry per merge, then the special tokens (`clip_vocab`).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["END_OF_WORD", "byte_alphabet", "read_merges_file", "read_bpe_gz", "clip_vocab", "BytePairEncoder"]

END_OF_WORD = "</w>"


def byte_alphabet() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2, Sec. 2.2).

    The order of the table is the order of the first 256 vocabulary ids: the printable bytes
    (which stand for themselves, so `!` is id 0), then the others (moved past U+00FF).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:  # control bytes, space, DEL, NBSP, soft hyphen
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _parse_merges(lines: Iterable[str], *, source: str) -> list[tuple[str, str]]:
    merges = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{source}: line {number} is not a merge 'left right': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_merges_file(path: str | Path) -> list[tuple[str, str]]:
    """The merges of a `merges.txt` (one `left right` pair a line, optional `#version` header)."""
    with open(path, encoding="utf-8") as f:
        return _parse_merges(f, source=str(path))


def read_bpe_gz(path: str | Path, *, num_merges: int = 48_894) -> list[tuple[str, str]]:
    """The first `num_merges` merges of CLIP's `bpe_simple_vocab_16e6.txt.gz` (its first line is a header)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = _parse_merges(lines[1 : num_merges + 1], source=str(path))
    if len(merges) != num_merges:
        raise ValueError(f"{path} holds {len(merges)} merges, fewer than the {num_merges} asked for")
    return merges


def clip_vocab(merges: Sequence[tuple[str, str]], specials: Sequence[str]) -> dict[str, int]:
    """CLIP's token -> id table: byte symbols, byte symbols + `</w>`, one id per merge, then `specials`."""
    symbols = list(byte_alphabet().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges] + list(specials)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the merge list produces the same token twice; is it a CLIP merge file?")
    return vocab


class BytePairEncoder:
    """Greedy lowest-rank-first merging of one word's byte symbols into vocabulary tokens."""

    def __init__(self, merges: Sequence[tuple[str, str]], *, cache_size: int = 20_000) -> None:
        self.ranks = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}
        self.cache_size = cache_size
        self._cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, word: str) -> tuple[str, ...]:
        """Tokens of one pre-tokenised word already written in byte symbols, the last one ending in `</w>`."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        tokens = self._merge(word)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # a plain bounded dict: every operation on it is atomic under the GIL
        self._cache[word] = tokens
        return tokens

    def _merge(self, word: str) -> tuple[str, ...]:
        if not word:
            return ()
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        ranks = self.ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            left, right = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)
