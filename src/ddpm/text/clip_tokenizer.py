"""The CLIP BPE tokenizer (Radford et al. 2021, "CLIP", Sec. 2.4), id for id as Stable Diffusion runs it.

Text -> ids, in order: special tokens written verbatim are cut out (`split_specials`), the rest is
normalised and pre-tokenised (`ddpm.text.normalize`), each word is written in byte symbols and
merged by BPE (`ddpm.text.bpe`). A batch becomes `input_ids [B, L]`:
`<|startoftext|> tokens… <|endoftext|> pad…`, truncated to `max_length` (77 for every SD text encoder).

Vocabularies: CLIP's own `bpe_simple_vocab_16e6.txt.gz` (a copy ships with the package, MIT, see
`ddpm/assets/LICENSE-CLIP.txt`) or a checkpoint's `tokenizer/` folder (`vocab.json`, `merges.txt`
and optionally `special_tokens_map.json` / `tokenizer_config.json`, which choose the padding token:
`<|endoftext|>` for SD 1.x, `!` = id 0 for SD 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .bpe import END_OF_WORD, BytePairEncoder, byte_alphabet, clip_vocab, read_bpe_gz, read_merges_file
from .normalize import normalize, pretokenize, split_specials

__all__ = ["CLIPTokenizer", "Tokenized", "BOS_TOKEN", "EOS_TOKEN", "PACKAGED_BPE_FILE"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PACKAGED_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
PADDINGS = ("max_length", "longest")


class Tokenized(NamedTuple):
    """A tokenised batch: ids and mask `[B, L]`, and per prompt how many tokens truncation dropped."""

    input_ids: Tensor
    attention_mask: Tensor
    num_dropped: list[int]


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer with its text cleaning; `tok(prompts) -> input_ids [B, 77]`.

    `specials` maps each special token to whether it is matched after normalisation (`True`, so a
    differently-cased spelling matches too) or only verbatim (`False`), as a tokenizer folder says.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str | None = None,
        unk_token: str | None = None,
        model_max_length: int = 77,
        specials: dict[str, bool] | None = None,
    ) -> None:
        pad_token = eos_token if pad_token is None else pad_token
        unk_token = eos_token if unk_token is None else unk_token
        for role, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if token not in vocab:
                raise ValueError(f"{role} token {token!r} is not in the vocabulary; pass one that is")
        if model_max_length < 2:
            raise ValueError(f"model_max_length must be >= 2 (room for BOS and EOS), not {model_max_length}")
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe = BytePairEncoder(merges)
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.bos_token_id = vocab[bos_token]
        self.eos_token_id = vocab[eos_token]
        self.pad_token_id = vocab[pad_token]
        self.unk_token_id = vocab[unk_token]
        self.model_max_length = model_max_length
        if specials is None:
            specials = dict.fromkeys((bos_token, eos_token, pad_token, unk_token), False)
        missing = [t for t in specials if t not in vocab]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.specials = dict(specials)
        self._raw_specials = tuple(t for t, normalized in self.specials.items() if not normalized)
        # A special matched after normalisation is looked for in its normalised spelling.
        self._normalized_specials = {normalize(t): t for t, normalized in self.specials.items() if normalized}
        self._special_ids = {vocab[t] for t in self.specials}
        self._byte_symbol = byte_alphabet()
        self._symbol_byte = {s: b for b, s in self._byte_symbol.items()}

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_bpe_file(cls, path: str | Path | None = None, *, pad_token: str | None = None) -> CLIPTokenizer:
        """From CLIP's `bpe_simple_vocab_16e6.txt.gz` (default: the packaged copy); pads with EOS (SD 1.x)."""
        if path is None:
            with resources.as_file(resources.files("ddpm") / "assets" / PACKAGED_BPE_FILE) as packaged:
                merges = read_bpe_gz(packaged)
        else:
            merges = read_bpe_gz(path)
        vocab = clip_vocab(merges, [BOS_TOKEN, EOS_TOKEN])
        return cls(vocab, merges, pad_token=pad_token)

    @classmethod
    def from_folder(cls, path: str | Path) -> CLIPTokenizer:
        """From a `tokenizer/` folder: `vocab.json` + `merges.txt` (or, as newer transformers save it, only
        `tokenizer.json`), special tokens from its JSON configs."""
        folder = Path(path)
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer.json").is_file():
            vocab, merges = _read_tokenizer_json(folder / "tokenizer.json")
        else:
            for name in ("vocab.json", "merges.txt"):
                if not (folder / name).is_file():
                    raise FileNotFoundError(f"{folder} has no {name}; point at a tokenizer folder "
                                            "holding both (or a tokenizer.json)")
            vocab = _read_json(folder / "vocab.json")
            merges = read_merges_file(folder / "merges.txt")
        if not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError(f"{folder} vocabulary should map each token to an integer id")
        config = _read_json(folder / "tokenizer_config.json")
        # Where both files name a role, special_tokens_map.json wins, as in transformers.
        settings = {**config, **_read_json(folder / "special_tokens_map.json")}
        # Which special tokens match after normalisation follows transformers' rule: walk the roles in
        # this order, skip an entry equal to one already seen, and let the last entry of a token decide.
        tokens: dict[str, str] = {}
        entries: list[tuple[str, bool, bool]] = []
        for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
            default = BOS_TOKEN if role == "bos_token" else EOS_TOKEN
            value = settings.get(role)
            entry = _special_entry(default if value is None else value, folder=folder, role=role)
            tokens[role] = entry[0]
            if entry not in entries:
                entries.append(entry)
        specials = {content: normalized for content, normalized, _ in entries}
        max_length = config.get("model_max_length")
        if not isinstance(max_length, int | float) or max_length > 1_000_000:  # absent, or "unlimited"
            max_length = 77

        return cls(vocab, merges, model_max_length=int(max_length), specials=specials, **tokens)

    # ----------------------------------------------------------------------------- text <-> ids

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return len(self.encoder)

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt, without BOS/EOS and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes one string, got {type(text).__name__}")
        ids: list[int] = []
        for raw, is_special in split_specials(text, self._raw_specials):
            if is_special:
                ids.append(self.encoder[raw])
                continue
            for part, is_special in split_specials(normalize(raw), tuple(self._normalized_specials)):
                if is_special:
                    ids.append(self.encoder[self._normalized_specials[part]])
                else:
                    ids.extend(self._encode_words(part))
        return ids

    def _encode_words(self, text: str) -> list[int]:
        ids = []
        for word in pretokenize(text):
            symbols = "".join(self._byte_symbol[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder.get(token, self.unk_token_id) for token in self.bpe(symbols))
        return ids

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of a list of ids (`</w>` becomes a space; invalid UTF-8 becomes U+FFFD)."""
        if isinstance(ids, Tensor):
            ids = ids.flatten().tolist()
        text = []
        for i in ids:
            i = int(i)
            if i not in self.decoder:
                raise ValueError(f"id {i} is outside the vocabulary (0 … {self.vocab_size - 1})")
            if skip_special_tokens and i in self._special_ids:
                continue
            text.append(self.decoder[i])
        data = bytearray()
        for c in "".join(text):
            b = self._symbol_byte.get(c)
            data.extend(c.encode("utf-8") if b is None else (b,))  # a custom vocabulary may hold other text
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding: str = "max_length",
        truncation: bool = True,
    ) -> Tokenized:
        """`input_ids`, `attention_mask` `[B, L]` (BOS, tokens, EOS, pad) and tokens dropped per prompt."""
        if isinstance(texts, str):
            texts = [texts]
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        max_length = self.model_max_length if max_length is None else max_length
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS (>= 2), got {max_length}")
        rows, dropped = [], []
        for text in texts:
            ids = self.encode(text)
            keep = len(ids) if not truncation else min(len(ids), max_length - 2)
            rows.append([self.bos_token_id, *ids[:keep], self.eos_token_id])
            dropped.append(len(ids) - keep)
        longest = max((len(r) for r in rows), default=2)
        if padding == "max_length" and longest > max_length:
            raise ValueError(
                f"a prompt has {longest} tokens with BOS/EOS, more than max_length={max_length}; "
                "pass truncation=True, or padding='longest' and split the ids into chunks yourself"
            )
        length = max_length if padding == "max_length" else longest
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[b, : len(row)] = 1
        return Tokenized(input_ids, attention_mask, dropped)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        padding: str = "max_length",
        truncation: bool = True,
    ) -> Tensor:
        """`input_ids [B, max_length]` (LongTensor) of a prompt or a batch; see `tokenize` for the details."""
        return self.tokenize(texts, max_length=max_length, padding=padding, truncation=truncation).input_ids

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(vocab_size={self.vocab_size}, pad_token={self.pad_token!r}, "
            f"model_max_length={self.model_max_length})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a `tokenizers` BPE `tokenizer.json` (merges written "a b" or as ["a", "b"])."""
    model = _read_json(path).get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path} does not hold a BPE tokenizer model (model.type BPE with a vocab)")
    merges: list[tuple[str, str]] = []
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"{path}: a merge should be two tokens, got {m!r}")
        merges.append((pair[0], pair[1]))
    return dict(model["vocab"]), merges


def _special_entry(value: Any, *, folder: Path, role: str) -> tuple[str, bool, bool]:
    """(content, normalized, written as a plain string) of one special-token entry of a tokenizer config."""
    if isinstance(value, str):
        return value, False, True
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        unsupported = [k for k in ("lstrip", "rstrip", "single_word") if value.get(k)]
        if unsupported:
            raise ValueError(f"{folder}: {role} sets {unsupported}, options this tokenizer does not support")
        return value["content"], bool(value.get("normalized", False)), False
    raise ValueError(f"{folder}: cannot read {role} = {value!r}; expected a string or {{'content': ...}}")
