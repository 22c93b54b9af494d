"""CLIP tokenizer: id-for-id parity with transformers' CLIPTokenizer built from the same vocabulary files.

transformers 5 has a single CLIPTokenizer, backed by the Rust `tokenizers` library (the "fast" one;
the pure-Python one is gone), so that is the reference here, loaded with `from_pretrained(folder)` the
way diffusers loads a checkpoint's `tokenizer/` folder.
"""

from __future__ import annotations

import gzip
import json
import random
import unicodedata
from pathlib import Path

import pytest
import torch

from ddpm.text import CLIPTokenizer
from ddpm.text.bpe import BytePairEncoder, clip_vocab, read_bpe_gz
from ddpm.text.normalize import WHITESPACE, normalize, pretokenize, split_specials

transformers = pytest.importorskip("transformers")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "src" / "ddpm" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size is 49,408 = 256 + 256 + merges + 2


def _write_vocab_files(folder: Path) -> None:
    """vocab.json + merges.txt from the .gz, derived here independently of ddpm.text.bpe (CLIP's recipe)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    lines = gzip.open(ASSET, "rt", encoding="utf-8").read().split("\n")[1 : NUM_MERGES + 1]
    tokens = symbols + [s + "</w>" for s in symbols] + [line.replace(" ", "") for line in lines]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _added(content: str, normalized: bool, *, typed: bool) -> dict:
    entry = {"content": content, "normalized": normalized}
    entry.update(dict.fromkeys(("lstrip", "rstrip", "single_word"), False))
    return {"__type": "AddedToken", **entry} if typed else entry


def _sd_folder(root: Path, name: str, pad: str) -> Path:
    """A tokenizer folder with the JSON configs as SD 1.5 (pad `<|endoftext|>`) / SD 2 (pad `!`) ship them."""
    folder = root / name
    _write_vocab_files(folder)
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    config = {
        "add_prefix_space": False,
        "bos_token": _added(bos, True, typed=True),
        "do_lower_case": True,
        "eos_token": _added(eos, True, typed=True),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added(eos, True, typed=True),
    }
    special_map = {"bos_token": _added(bos, True, typed=False), "eos_token": _added(eos, True, typed=False),
                   "pad_token": pad, "unk_token": _added(eos, True, typed=False)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip_tokenizer")
    _write_vocab_files(root / "bare")
    sd15, sd2 = _sd_folder(root, "sd15", "<|endoftext|>"), _sd_folder(root, "sd2", "!")
    return {"bare": root / "bare", "sd15": sd15, "sd2": sd2}


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.from_bpe_file()


@pytest.fixture(scope="module")
def reference(folders):
    return transformers.CLIPTokenizer.from_pretrained(str(folders["bare"]))


HARD_CASES = [
    "a photo of an astronaut riding a horse on mars",
    "A PHOTO Of An AsTrOnAuT",
    "",
    "   ",
    "\t\n\r\x0b\x0c",
    "masterpiece, best quality, (ultra-detailed:1.2), [bad hands], {blue|red} eyes",
    "Price: $1,000.50 (or €999,99) — 50% off!!! #sale @shop",
    "1234567890 3.14159 -42 1e-5 0x1F 10^6 ½ ² ³ Ⅻ ① ٣ ൬",
    "https://example.com/path?q=cat&size=512x512#anchor",
    "don't you're we've I'm they'll he'd it's DON'T IT'S O'NEILL rock'n'roll '' 'S",
    "!!!???...,,,;;;:::---___***&&&",
    "café naïve façade résumé Ångström Øresund crème brûlée",
    "cafe\u0301 e\u0301le\u0300ve decomposed accents combine under NFC",
    "ΟΔΟΣ ΣΑΣ Σ ὈΔΥΣΣΕΎΣ final sigma stays σ",
    "İstanbul IĞDIR ǅemal ﬁne ﬂow ß ẞ",
    "東京タワー 夜景 高画質 一二三",
    "Москва зимой, красная площадь",
    "مرحبا بالعالم שלום עולם",
    "नमस्ते दुनिया ภาษาไทย 한국어 텍스트",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ⭐️ 🐱‍👤",
    "zero\u200bwidth\u200cjoiner\u200d no\u00a0break\u3000ideographic\u2028line\u2029para\u0085nel",
    "file\x1cgroup\x1drecord\x1eunit\x1f separators are not whitespace here",
    "control\x00char\x07bell\x7fdel",
    "&amp; &lt;tag&gt; &quot;quoted&quot; <b>bold</b>",
    "<|startoftext|>verbatim specials<|endoftext|> and <|ENDOFTEXT|> and <|startoftext|>!",
    "!<|endoftext|> <|endoftext|>! x<|startoftext|>y",
    "word" * 40,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a  b   c    d\t\te\n\nf",
    "\U0001d54f\U0001d56a\U0001d55f mathematical double-struck letters \U0001f600",
    " ".join(f"word{i}" for i in range(300)),
    ", ".join(["highly detailed", "8k", "octane render", "trending on artstation"] * 20),
]

_WORDS = (
    "a the of portrait photo painting cat dog city night neon cyberpunk forest river mountain castle "
    "dragon astronaut robot girl boy old man woman smiling beautiful detailed realistic watercolor oil "
    "canvas sunset Van Gogh Greg Rutkowski Unreal Engine 4K HDR bokeh macro lens f/1.8 85mm"
).split()
_PIECES = [
    "!", "?", ".", ",", ";", ":", "(", ")", "[", "]", "{", "}", "<", ">", "|", "/", "\\", "'", '"', "-",
    "_", "*", "#", "@", "&", "%", "$", "^", "~", "`", "+", "=", "...", "—", "–", "…", "«", "»", "“", "”",
    "‘", "’", "0", "7", "42", "1,000", "3.5", "2024", "½", "²", "٣",
    "é", "ü", "ñ", "ø", "Σ", "ς", "İ", "ß", "ﬁ", "東京", "猫", "カタカナ", "ひらがな", "한국", "Ж", "ψ",
    "א", "ع", "क्ष", "ไทย",
    "😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "\u200b", "\u0301", "\x1c", "\x00",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL",
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>",
]
_SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", "\u00a0", "\u3000", ", ", " \r\n "]


def _generated_prompts(count: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        n = rng.choice([1, 3, 8, 20, 60, 150])
        parts = [rng.choice(_WORDS) if rng.random() < 0.6 else rng.choice(_PIECES) for _ in range(n)]
        parts = [p.upper() if rng.random() < 0.1 else p for p in parts]
        prompts.append("".join(p + rng.choice(_SEPARATORS) for p in parts))
    return prompts


PROMPTS = HARD_CASES + _generated_prompts(300, seed=0)


def _reference_ids(reference, texts, **kwargs) -> torch.Tensor:
    return reference(texts, return_tensors="pt", **kwargs)["input_ids"]


def test_vocabulary_matches_the_published_clip_ids(ours):
    # Ids every SD 1.x user sees: "!" = 0 is SD 2's padding id, "a</w>" = 320, specials 49406/49407.
    assert ours.vocab_size == 49408
    assert (ours.encoder["!"], ours.encoder["a</w>"]) == (0, 320)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (49406, 49407, 49407)
    ids = ours("a photo of an astronaut riding a horse on mars", padding="longest")
    assert ids.tolist() == [[49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]]


def test_packaged_file_and_folder_give_the_same_tokenizer(ours, folders):
    from_folder = CLIPTokenizer.from_folder(folders["bare"])
    assert from_folder.encoder == ours.encoder
    assert from_folder.bpe.ranks == ours.bpe.ranks
    assert from_folder.pad_token_id == ours.pad_token_id == 49407
    assert CLIPTokenizer.from_bpe_file(ASSET).encoder == ours.encoder


def test_encode_matches_transformers_on_hard_and_generated_prompts(ours, reference):
    expected = reference(PROMPTS, add_special_tokens=False)["input_ids"]
    mismatches = [(p, e, ours.encode(p)) for p, e in zip(PROMPTS, expected) if ours.encode(p) != e]
    assert not mismatches, mismatches[:3]
    assert len(PROMPTS) >= 300


def test_batch_ids_match_transformers_with_truncation_and_padding(ours, reference):
    expected = _reference_ids(reference, PROMPTS, padding="max_length", max_length=77, truncation=True)
    assert torch.equal(ours(PROMPTS), expected)
    assert ours(PROMPTS).dtype == torch.long and ours(PROMPTS).shape == (len(PROMPTS), 77)
    batch = ours.tokenize(PROMPTS[:40], padding="longest", max_length=77)
    ref = reference(PROMPTS[:40], return_tensors="pt", padding="longest", max_length=77, truncation=True)
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])


def test_truncation_report_counts_the_dropped_tokens(ours, reference):
    lengths = [len(ids) for ids in reference(PROMPTS, add_special_tokens=False)["input_ids"]]
    assert ours.tokenize(PROMPTS).num_dropped == [max(0, n - 75) for n in lengths]
    assert max(lengths) > 300 and min(lengths) == 0  # long prompts really were truncated
    long_prompt = " ".join(f"word{i}" for i in range(300))
    result = ours.tokenize([long_prompt, "short"])
    assert result.num_dropped[1] == 0 and result.num_dropped[0] == len(ours.encode(long_prompt)) - 75
    assert result.input_ids[0, -1].item() == ours.eos_token_id


@pytest.mark.parametrize("name", ["bare", "sd15", "sd2"])
def test_tokenizer_folders_match_transformers(folders, name):
    ours = CLIPTokenizer.from_folder(folders[name])
    reference = transformers.CLIPTokenizer.from_pretrained(str(folders[name]))
    assert ours.pad_token_id == reference.pad_token_id
    prompts = HARD_CASES + ["x!", "hello! world!!", "<|StartOfText|> <|EndOfText|> <|endoftext|>"]
    expected = _reference_ids(reference, prompts, padding="max_length", max_length=77, truncation=True)
    assert torch.equal(ours(prompts), expected)


def test_sd2_folder_pads_with_id_0(folders):
    ours = CLIPTokenizer.from_folder(folders["sd2"])
    ids = ours("a cat")
    assert ours.pad_token_id == 0 and ids[0, 4:].eq(0).all() and ids[0, 3].item() == 49407
    assert ours.model_max_length == 77


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn", "Co")), max_size=40))
def test_random_unicode_text_matches_transformers(ours, reference, text):
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]


def _codepoint_probes(codepoints) -> list[str]:
    # Each character alone, inside letters, between digits, after an apostrophe, inside punctuation.
    return [f"x{c}y {c}{c}1{c} '{c}s !{c}. Σ{c}" for c in map(chr, codepoints)]


def _assigned_codepoints() -> list[int]:
    return [
        cp for cp in range(0x110000)
        if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) not in ("Cn", "Co")
    ]


def test_sampled_codepoints_match_transformers(ours, reference):
    # Every whitespace, category-boundary and case-mapping oddity we know of, plus a seeded sample.
    rng = random.Random(1)
    sample = sorted(set(rng.sample(_assigned_codepoints(), 3000)) | {ord(c) for c in WHITESPACE}
                    | set(range(0x00, 0x80)) | {0x130, 0x3A3, 0x1C5, 0xDF, 0x1E9E, 0xFB01, 0x2160, 0xFF10})
    probes = _codepoint_probes(sample)
    expected = reference(probes, add_special_tokens=False)["input_ids"]
    bad = [hex(cp) for cp, p, e in zip(sample, probes, expected) if ours.encode(p) != e]
    assert not bad, bad[:20]


@pytest.mark.slow
def test_every_assigned_codepoint_matches_transformers(ours, reference):
    # ~145k code points, ~15 s; the sampled test above runs the same path on 3k of them.
    codepoints = _assigned_codepoints()
    probes = _codepoint_probes(codepoints)
    expected = reference(probes, add_special_tokens=False)["input_ids"]
    bad = [hex(cp) for cp, p, e in zip(codepoints, probes, expected) if ours.encode(p) != e]
    assert not bad, bad[:20]


def test_decode_matches_transformers(ours, reference):
    for prompt in HARD_CASES[:28]:
        ids = ours(prompt)[0]
        for skip in (True, False):
            expected = reference.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == expected
    assert ours.decode(ours.encode("A Cat, 2 DOGS!")) == "a cat , 2 dogs !"


def test_normalisation_steps():
    assert normalize("ΟΔΟΣ\t\u3000X\u00a0\x1c") == "οδοσ x \x1c"  # no final sigma; \x1c is not whitespace
    assert normalize("cafe\u0301") == "caf\u00e9"
    assert pretokenize("don't!'s 1,05 <|endoftext|>!") == [
        "don", "'t", "!'", "s", "1", ",", "0", "5", "<|", "endoftext", "|>", "!"
    ]
    assert pretokenize("!<|endoftext|>") == ["!<|", "endoftext", "|>"]
    parts = split_specials("a<|x|>b<|x|><|x", ("<|x|>", "<|"))
    assert parts == [("a", False), ("<|x|>", True), ("b", False), ("<|x|>", True), ("<|", True), ("x", False)]


def test_bpe_merges_lowest_rank_first_and_caches():
    bpe = BytePairEncoder([("a", "b"), ("ab", "c</w>"), ("b", "c</w>")])
    assert bpe("abc") == ("abc</w>",)  # a+b (rank 0) before b+c</w> (rank 2)
    assert bpe("bc") == ("bc</w>",)
    assert bpe("aaa") == ("a", "a", "a</w>")
    assert "abc" in bpe._cache
    merges = read_bpe_gz(ASSET)
    assert len(merges) == NUM_MERGES
    assert len(clip_vocab(merges, ["<|startoftext|>", "<|endoftext|>"])) == 49408


def test_bad_input_raises_clear_errors(ours, folders, tmp_path):
    with pytest.raises(ValueError, match="padding"):
        ours(["a"], padding="do_not_pad")
    with pytest.raises(ValueError, match="truncation=True"):
        ours([" ".join(["cat"] * 100)], truncation=False)
    assert ours([" ".join(["cat"] * 100)], truncation=False, padding="longest").shape == (1, 102)
    with pytest.raises(ValueError, match="max_length"):
        ours("a", max_length=1)
    with pytest.raises(TypeError, match="one string"):
        ours.encode(["a"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([49408])
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    odd = tmp_path / "odd"
    _write_vocab_files(odd)
    (odd / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "!", "lstrip": True}}))
    with pytest.raises(ValueError, match="lstrip"):
        CLIPTokenizer.from_folder(odd)
    (odd / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        CLIPTokenizer.from_folder(odd)
