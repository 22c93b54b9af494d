"""Prompt syntax, chunking of long prompts and weighted encoding (ddpm.pipelines.prompts).

Weights and chunk boundaries are checked against hand-computed expectations: the web UI's emphasis factor
1.1 per bracket, 75 tokens per chunk, the mean-restoring rescale.
"""

from __future__ import annotations

import types

import pytest
import torch

from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
from ddpm.pipelines.prompts import BREAK, CHUNK_TOKENS, encode_prompts, parse_prompt, tokenize_prompt
from ddpm.text import CLIPTokenizer


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_bpe_file()


@pytest.fixture(scope="module")
def encoder():
    """A random encoder whose states have a clearly non-zero mean, as trained CLIP's do (a freshly built
    final LayerNorm, weight 1 and bias 0, would make every token's mean 0 and the rescale meaningless)."""
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(width=32, layers=2, heads=2, intermediate=64)).eval()
    with torch.no_grad():
        model.text_model.final_layer_norm.bias.normal_(0.5, 0.5)
    return model


class _Shifted(torch.nn.Module):
    """`encoder`'s states minus their chunk mean (`zero=False`), or all zero: encoders whose mean is 0."""

    def __init__(self, encoder, *, zero: bool):
        super().__init__()
        self.encoder, self.zero = encoder, zero

    def forward(self, ids, clip_skip=0):
        states = self.encoder(ids, clip_skip=clip_skip).last_hidden_state
        states = states * 0 if self.zero else states - states.mean(dim=(1, 2), keepdim=True)
        return types.SimpleNamespace(last_hidden_state=states)


@pytest.mark.parametrize(
    "text, runs",
    [
        ("", [("", 1.0)]),
        ("a photo of a cat", [("a photo of a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("a ((cat))", [("a ", 1.0), ("cat", 1.1 * 1.1)]),
        ("a [cat]", [("a ", 1.0), ("cat", 1 / 1.1)]),
        ("a [[cat]]", [("a ", 1.0), ("cat", 1 / 1.1 / 1.1)]),
        ("a (cat:1.3) dog", [("a ", 1.0), ("cat", 1.3), (" dog", 1.0)]),
        ("(cat: 0.5 )", [("cat", 0.5)]),
        ("(cat:-1)", [("cat", -1.0)]),
        ("(cat:.25)", [("cat", 0.25)]),
        ("(a [b] c:2)", [("a ", 2.0), ("b", 2 / 1.1), (" c", 2.0)]),
        ("((a:1.5) b)", [("a", 1.5 * 1.1), (" b", 1.1)]),
        (r"\(literal\) \[x\] a\\b", [("(literal) [x] a\\b", 1.0)]),
        ("smile :)", [("smile :)", 1.0)]),  # a stray closing bracket is text
        ("x ]", [("x ]", 1.0)]),
        ("(open ended", [("open ended", 1.1)]),  # unclosed: weights the rest
        ("[open", [("open", 1 / 1.1)]),
        ("(a:1.2)(b:1.2)", [("ab", 1.2)]),  # equal neighbours merge
        ("(cat:x)", [("cat:x", 1.1)]),  # not a number: text, and the bracket is plain emphasis
        ("a BREAK b", [("a ", 1.0), (BREAK, -1.0), (" b", 1.0)]),
        ("a,BREAK,b", [("a,", 1.0), (BREAK, -1.0), (",b", 1.0)]),
        ("BREAKING news", [("BREAKING news", 1.0)]),  # only the whole word
        ("(a BREAK b)", [("a ", 1.1), (BREAK, -1.0), (" b", 1.1)]),
    ],
)
def test_parse(text, runs):
    got = parse_prompt(text)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs], rel=1e-12)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError, match="must be a string"):
        parse_prompt(None)


def test_plain_prompt_is_the_tokenizer_row(tok):
    for text in ("", "a photo of an astronaut riding a horse", "word " * CHUNK_TOKENS):
        c = tokenize_prompt(tok, text)
        assert c.num_chunks == 1 and not c.weighted
        assert torch.equal(c.input_ids, tok([text]))


def test_weights_land_on_their_tokens(tok):
    c = tokenize_prompt(tok, "a (red:1.5) [car]")
    ids = tok.encode("a") + tok.encode("red") + tok.encode("car")
    assert c.input_ids[0, 1 : 1 + len(ids)].tolist() == ids
    assert c.weights[0, :5].tolist() == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])
    assert bool((c.weights[0, 5:] == 1).all()) and c.weighted


def test_long_prompt_is_chunked_not_truncated(tok):
    words = [f"w{i}" for i in range(100)]  # "w12" etc.: several tokens each, no commas
    text = " ".join(words)
    ids = tok.encode(text)
    c = tokenize_prompt(tok, text)
    assert c.num_tokens == len(ids) > 2 * CHUNK_TOKENS
    assert c.num_chunks == -(-len(ids) // CHUNK_TOKENS)
    for k in range(c.num_chunks):
        part = ids[k * CHUNK_TOKENS : (k + 1) * CHUNK_TOKENS]
        row = c.input_ids[k].tolist()
        assert row[0] == tok.bos_token_id and row[1 : 1 + len(part)] == part
        assert row[1 + len(part)] == tok.eos_token_id


def test_chunks_break_after_a_late_comma(tok):
    # 70 one-token words, a comma, then 10 more: the first chunk ends at the comma (71 tokens)
    text = "cat " * 70 + ", " + "dog " * 10
    c = tokenize_prompt(tok, text)
    comma = tok.encode(",")[0]
    assert c.num_chunks == 2
    first = c.input_ids[0].tolist()
    assert first[71] == comma and first[72] == tok.eos_token_id
    assert c.input_ids[1, 1:11].tolist() == tok.encode("dog") * 10
    # an early comma (more than 20 tokens before the window's end) is not used
    early = tokenize_prompt(tok, "cat " * 10 + ", " + "dog " * 80)
    assert early.input_ids[0, 1 + CHUNK_TOKENS].item() == tok.eos_token_id


def test_break_starts_a_new_chunk(tok):
    c = tokenize_prompt(tok, "a cat BREAK a dog")
    assert c.num_chunks == 2
    assert c.input_ids[0, :4].tolist() == [tok.bos_token_id, *tok.encode("a cat"), tok.eos_token_id]
    assert c.input_ids[1, :4].tolist() == [tok.bos_token_id, *tok.encode("a dog"), tok.eos_token_id]


def test_padding_to_more_chunks(tok):
    c = tokenize_prompt(tok, "a cat", num_chunks=3)
    assert c.num_chunks == 3
    assert torch.equal(c.input_ids[1], tok([""])[0]) and torch.equal(c.input_ids[2], tok([""])[0])
    with pytest.raises(ValueError, match="less than"):
        tokenize_prompt(tok, "a BREAK b BREAK c", num_chunks=2)


def test_plain_prompt_encodes_exactly_like_the_encoder(tok, encoder):
    prompts = ["a photo of a cat", ""]
    states, chunks = encode_prompts(encoder, tok, prompts)
    ref = encoder(tok(prompts)).last_hidden_state
    assert states.shape == (2, 77, 32)
    assert torch.equal(states, ref)


def test_weighting_rescales_to_the_unweighted_mean(tok, encoder):
    plain, _ = encode_prompts(encoder, tok, ["a red car"])
    weighted, chunks = encode_prompts(encoder, tok, ["a (red:1.8) car"])
    assert chunks[0].weighted
    w = chunks[0].weights[0]
    expected = plain[0] * w[:, None]
    expected = expected * (plain[0].mean() / expected.mean())
    torch.testing.assert_close(weighted[0], expected, rtol=1e-5, atol=1e-6)
    assert weighted[0].mean().item() == pytest.approx(plain[0].mean().item(), rel=1e-4)
    # only the weighted position changes direction; the others are scaled by one common factor
    ratio = weighted[0] / plain[0]
    others = torch.cat([ratio[:2], ratio[3:]]).flatten()
    torch.testing.assert_close(others, others[:1].expand_as(others), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("zero", [True, False], ids=["all-zero", "zero-mean"])
def test_weighting_an_encoder_with_mean_zero_keeps_the_weighted_states(tok, encoder, zero):
    """A chunk mean of 0 has no ratio to restore (0/0 = NaN, or noise / noise): the weighted states stay."""
    shifted = _Shifted(encoder, zero=zero)
    prompt = "a (red:1.8) car " + " ".join(f"w{i}" for i in range(30))  # long: more than one chunk
    plain, _ = encode_prompts(shifted, tok, [prompt.replace("(red:1.8)", "red")])
    weighted, chunks = encode_prompts(shifted, tok, [prompt])
    assert chunks[0].num_chunks > 1 and bool(torch.isfinite(weighted).all())
    w = torch.cat(list(chunks[0].weights))
    torch.testing.assert_close(weighted[0], plain[0] * w[:, None], rtol=1e-5, atol=1e-6)


def test_chunks_encode_separately_and_concatenate(tok, encoder):
    long = " ".join(f"w{i}" for i in range(60))  # > 75 tokens
    states, chunks = encode_prompts(encoder, tok, [long, "short"])
    k = chunks[0].num_chunks
    assert k >= 2 and chunks[1].num_chunks == k  # the short prompt is padded to as many chunks
    assert states.shape == (2, 77 * k, 32)
    for j in range(k):
        ref = encoder(chunks[0].input_ids[j : j + 1]).last_hidden_state[0]
        assert torch.equal(states[0, 77 * j : 77 * (j + 1)], ref)
    empty = encoder(tok([""])).last_hidden_state[0]
    assert torch.equal(states[1, 77:154], empty)


def test_min_chunks_and_batch_independence(tok, encoder):
    alone, _ = encode_prompts(encoder, tok, ["a (cat:1.4)"], min_chunks=2)
    batch, _ = encode_prompts(encoder, tok, ["plain words", "a (cat:1.4)"], min_chunks=2)
    assert alone.shape == (1, 154, 32)
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="list of prompts"):
        encode_prompts(encoder, tok, "one prompt")
