"""Prompts as Stable Diffusion users write them: attention weights, `BREAK`, prompts over 77 tokens.

Syntax (the one the popular web UIs accept; Stable Diffusion web UI's "attention/emphasis"):

| written          | weight of the enclosed text                    |
| ---------------- | ---------------------------------------------- |
| `(word)`         | x 1.1 (nest for more: `((word))` = x 1.21)     |
| `[word]`         | / 1.1                                          |
| `(word:1.3)`     | x 1.3 (any number, also < 1 or negative)       |
| `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` | the literal character    |
| `BREAK`          | end the current 75-token chunk here            |

An unclosed bracket weights everything after it, as the web UIs do; a stray closing bracket is text.

Encoding (`encode_prompts`): each run of equal weight is tokenized on its own, the token list is cut into
chunks of 75 (at the last comma within the final 20 tokens of a window when there is one, as the web UI
does), each chunk is wrapped `BOS tokens EOS pad…` to 77 ids and encoded separately, and the chunks'
states are concatenated along the sequence axis: `[B, 77 K, D]`. Weights follow the web UI's convention:
token states are multiplied by their weight and the result rescaled so the chunk's mean equals the
unweighted mean. A prompt of at most 75 tokens with no weights is encoded exactly as diffusers'
`StableDiffusionPipeline` encodes it (one 77-token row, no rescaling).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..text.clip_tokenizer import CLIPTokenizer

__all__ = [
    "BREAK",
    "CHUNK_TOKENS",
    "PromptChunks",
    "parse_prompt",
    "tokenize_prompt",
    "encode_prompts",
]

BREAK = "BREAK"
CHUNK_TOKENS = 75  # 77 positions minus BOS and EOS
COMMA_BACKTRACK = 20
EMPHASIS = 1.1
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")
_BREAK = re.compile(r"(?<![^\s,()\[\]])BREAK(?![^\s,()\[\]])")
_ESCAPABLE = "\\()[]"


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """Runs `[(text, weight)]` of a prompt in the attention syntax; a `BREAK` is the run `("BREAK", -1.0)`.

    Adjacent runs of equal weight are merged; an empty prompt is `[("", 1.0)]`.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    runs: list[list] = []  # [text, weight]
    round_open: list[int] = []  # index in `runs` where each open "(" starts
    square_open: list[int] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            runs.append(["".join(buf), 1.0])
            buf.clear()

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run[1] is not None:
                run[1] *= factor

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            buf.append(text[i + 1])
            i += 2
            continue
        if c == "B" and _BREAK.match(text, i):
            flush()
            runs.append([BREAK, None])
            i += len(BREAK)
            continue
        if c in "([":
            flush()
            (round_open if c == "(" else square_open).append(len(runs))
            i += 1
            continue
        if c == ":" and round_open:
            m = _WEIGHT.match(text, i)
            if m:
                flush()
                scale(round_open.pop(), float(m.group(1)))
                i = m.end()
                continue
        if c == ")" and round_open:
            flush()
            scale(round_open.pop(), EMPHASIS)
            i += 1
            continue
        if c == "]" and square_open:
            flush()
            scale(square_open.pop(), 1 / EMPHASIS)
            i += 1
            continue
        buf.append(c)
        i += 1
    flush()
    for start in round_open:
        scale(start, EMPHASIS)
    for start in square_open:
        scale(start, 1 / EMPHASIS)

    out: list[tuple[str, float]] = []
    for piece, weight in runs:
        if weight is None:
            out.append((BREAK, -1.0))
        elif out and out[-1][1] == weight and out[-1] != (BREAK, -1.0):
            out[-1] = (out[-1][0] + piece, weight)
        else:
            out.append((piece, weight))
    return out or [("", 1.0)]


@dataclass
class PromptChunks:
    """One prompt as 77-id rows: `input_ids [K, 77]`, per-position `weights [K, 77]`, its token count."""

    input_ids: Tensor
    weights: Tensor
    num_tokens: int

    @property
    def num_chunks(self) -> int:
        return self.input_ids.shape[0]

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1).any())


def _split(ids: list[int], weights: list[float], comma: int | None) -> list[tuple[list[int], list[float]]]:
    """Cut one BREAK-free token list into windows of at most CHUNK_TOKENS (at a late comma if any)."""
    chunks = []
    while len(ids) > CHUNK_TOKENS:
        cut = CHUNK_TOKENS
        if comma is not None:
            window = ids[:CHUNK_TOKENS]
            last = max((k for k, t in enumerate(window) if t == comma), default=-1)
            if last >= CHUNK_TOKENS - COMMA_BACKTRACK:
                cut = last + 1
        chunks.append((ids[:cut], weights[:cut]))
        ids, weights = ids[cut:], weights[cut:]
    chunks.append((ids, weights))
    return chunks


def tokenize_prompt(tokenizer: CLIPTokenizer, text: str, *, num_chunks: int | None = None) -> PromptChunks:
    """`text` -> 77-id rows `BOS tokens EOS pad…` with per-position weights (1 on BOS, EOS and padding).

    `num_chunks` pads with empty rows (`BOS EOS pad…`) up to that many chunks.
    """
    length = tokenizer.model_max_length
    if length != CHUNK_TOKENS + 2:
        raise ValueError(f"prompt chunking assumes a 77-token text encoder; this tokenizer has {length}")
    comma_ids = tokenizer.encode(",")
    comma = comma_ids[0] if len(comma_ids) == 1 else None
    segments: list[tuple[list[int], list[float]]] = [([], [])]
    for piece, weight in parse_prompt(text):
        if (piece, weight) == (BREAK, -1.0):
            segments.append(([], []))
            continue
        ids = tokenizer.encode(piece)
        segments[-1][0].extend(ids)
        segments[-1][1].extend([weight] * len(ids))
    chunks = [c for ids, weights in segments for c in _split(ids, weights, comma)]
    total = sum(len(ids) for ids, _ in chunks)
    if num_chunks is not None:
        if num_chunks < len(chunks):
            raise ValueError(
                f"num_chunks={num_chunks} is less than the {len(chunks)} chunks this prompt needs"
            )
        chunks += [([], [])] * (num_chunks - len(chunks))
    rows = torch.full((len(chunks), length), tokenizer.pad_token_id, dtype=torch.long)
    weights = torch.ones(len(chunks), length, dtype=torch.float32)
    for k, (ids, ws) in enumerate(chunks):
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        rows[k, : len(row)] = torch.tensor(row, dtype=torch.long)
        weights[k, 1 : 1 + len(ws)] = torch.tensor(ws, dtype=torch.float32)
    return PromptChunks(rows, weights, total)


@torch.no_grad()
def encode_prompts(
    text_encoder: nn.Module,
    tokenizer: CLIPTokenizer,
    prompts: Sequence[str],
    *,
    min_chunks: int = 1,
    clip_skip: int = 0,
) -> tuple[Tensor, list[PromptChunks]]:
    """Token states `[B, 77 K, D]` of `prompts` (K = the most chunks any of them needs, at least `min_chunks`)
    and each prompt's chunks. Weighted chunks are rescaled to their unweighted mean (web UI convention)."""
    if isinstance(prompts, str):
        raise ValueError("encode_prompts takes a list of prompts; wrap a single prompt as [prompt]")
    parsed = [tokenize_prompt(tokenizer, p) for p in prompts]
    k = max([min_chunks, *(c.num_chunks for c in parsed)])
    padded = [tokenize_prompt(tokenizer, p, num_chunks=k) for p in prompts]
    param = next(text_encoder.parameters())
    ids = torch.cat([c.input_ids for c in padded]).to(param.device)
    states = text_encoder(ids, clip_skip=clip_skip).last_hidden_state  # [B K, 77, D]
    weights = torch.cat([c.weights for c in padded]).to(states.device)
    if bool((weights != 1).any()):
        # A1111: z * w, then rescale so each chunk keeps the mean it had before weighting
        before = states.float().mean(dim=(1, 2), keepdim=True)
        weighted = states.float() * weights[..., None]
        after = weighted.mean(dim=(1, 2), keepdim=True)
        # A mean near zero has no usable ratio (0/0 is NaN, tiny/tiny is noise): such chunks stay unscaled.
        size = 1e-3 * states.float().abs().mean(dim=(1, 2), keepdim=True)
        usable = (before.abs() > size) & (after.abs() > size)
        rescaled = weighted * torch.where(usable, before / after, torch.ones_like(after))
        rows = (weights != 1).any(dim=1)
        states = torch.where(rows[:, None, None], rescaled.to(states.dtype), states)
    b, d = len(prompts), states.shape[-1]
    return states.reshape(b, k * states.shape[1], d), padded
