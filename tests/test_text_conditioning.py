"""Text conditioning: word tokenizer, small text encoder, caption dropout to the empty prompt."""

from __future__ import annotations

import warnings

import pytest
import torch

from ddpm.conditioning import CONDITIONERS, make_conditioner
from ddpm.conditioning.text import (
    TEXT_DEFAULTS,
    WordTextConditioner,
    text_conditioner_from_meta,
)
from ddpm.config import load_config
from ddpm.data.shapes import alignment_prompts, scene_for
from ddpm.models.small_text_encoder import SmallTextConfig, SmallTextEncoder
from ddpm.schedules import from_config
from ddpm.text.word_tokenizer import SPECIAL_TOKENS, WordTokenizer, words_of

CAPTIONS = [scene_for("train", i).caption for i in range(400)]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.from_captions(CAPTIONS, context_length=16)


def test_vocabulary_is_the_caption_words_after_the_special_tokens(tok):
    assert tuple(tok.vocab[:4]) == SPECIAL_TOKENS
    words = set(tok.vocab[4:])
    assert {"red", "purple", "circle", "triangle", "left", "above", "below", "small", "large"} <= words
    assert words == {w for c in CAPTIONS for w in c.split()}


def test_round_trip_of_every_alignment_prompt(tok):
    # Held-out prompts use the same words in new combinations: all of them are in the vocabulary.
    for prompt in alignment_prompts("seen", 20) + alignment_prompts("heldout", 20):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ids = tok([prompt]).input_ids[0]
        assert tok.decode(ids) == prompt
        assert ids[0] == tok.bos_id and ids.tolist().count(tok.eos_id) == 1


def test_words_are_lowercased_and_punctuation_stripped(tok):
    assert words_of("  A RED, circle!  ") == ["a", "red", "circle"]
    assert tok.encode("A RED, circle!") == tok.encode("a red circle")


def test_empty_prompt_is_bos_eos_and_padding(tok):
    t = tok([""])
    assert t.input_ids[0].tolist() == [tok.bos_id, tok.eos_id] + [tok.pad_id] * 14
    assert t.attention_mask[0].tolist() == [1, 1] + [0] * 14
    assert t.num_dropped == [0]


def test_truncation_warning_says_how_many_words_were_dropped(tok):
    long = " ".join(["a red circle"] * 6)  # 18 words, 14 fit
    with pytest.warns(UserWarning, match=r"4 word\(s\) dropped"):
        t = tok([long, "a blue square"])
    assert t.num_dropped == [4, 0]
    assert t.input_ids.shape == (2, 16) and t.input_ids[0, -1] == tok.eos_id


def test_unknown_words_become_unk_with_a_warning_naming_them(tok):
    with pytest.warns(UserWarning, match="'dodecahedron'"):
        ids = tok(["a red dodecahedron"]).input_ids[0]
    assert ids[3] == tok.unk_id
    assert tok.decode(ids) == "a red <unk>"


def test_tokenizer_serialises_to_json_and_back(tok):
    again = WordTokenizer.from_dict(tok.to_dict())
    assert again.vocab == tok.vocab and again.context_length == 16
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["red", "blue"])
    with pytest.raises(ValueError, match="context_length"):
        WordTokenizer(list(SPECIAL_TOKENS) + ["red"], context_length=2)


def test_encoder_ignores_padding_and_reads_word_order(tok):
    torch.manual_seed(0)
    enc = SmallTextEncoder(SmallTextConfig(vocab_size=tok.vocab_size, width=32, heads=4)).eval()
    a = tok(["a red circle above a blue square", "a blue square above a red circle"])
    states = enc(a.input_ids, a.attention_mask)
    assert states.shape == (2, 16, 32)
    assert not torch.allclose(states[0], states[1], atol=1e-4)
    # Real tokens do not see the padding: a shorter context gives the same states on them.
    short = enc(a.input_ids[:, :10], a.attention_mask[:, :10])
    assert torch.allclose(short, states[:, :10], atol=1e-5)
    with pytest.raises(ValueError, match="input_ids must be"):
        enc(torch.zeros(1, 17, dtype=torch.long))


def test_causal_encoder_states_depend_on_earlier_words_only(tok):
    torch.manual_seed(0)
    enc = SmallTextEncoder(SmallTextConfig(vocab_size=tok.vocab_size, width=32, heads=4, causal=True)).eval()
    bidirectional = SmallTextEncoder(SmallTextConfig(vocab_size=tok.vocab_size, width=32, heads=4)).eval()
    bidirectional.load_state_dict(enc.state_dict())
    a = tok(["a red circle to the left of a blue square", "a red circle to the right of a blue square"])
    with torch.no_grad():
        causal, full = enc(a.input_ids, a.attention_mask), bidirectional(a.input_ids, a.attention_mask)
    # <bos> a red circle to the: the same words so far, so the same causal states; later words differ
    assert torch.allclose(causal[0, :6], causal[1, :6], atol=1e-6)
    assert (causal[0, 6:12] - causal[1, 6:12]).abs().amax(dim=-1).min() > 1e-3
    assert (full[0, :6] - full[1, :6]).abs().amax() > 1e-3  # bidirectional: "left"/"right" reach every word
    # padding positions (after <eos>) see the whole prompt; the real tokens never see them
    short = enc(a.input_ids[:, :13], a.attention_mask[:, :13])
    assert torch.allclose(short, causal[:, :13], atol=1e-5)
    assert (causal[0, 13:] - causal[1, 13:]).abs().amax() > 1e-3


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of heads"):
        SmallTextConfig(vocab_size=10, width=30, heads=4)
    with pytest.raises(ValueError, match="unknown SmallTextConfig key"):
        SmallTextConfig.from_dict({"vocab_size": 10, "depth": 3})
    with pytest.raises(ValueError, match="causal must be true or false"):
        SmallTextConfig(vocab_size=10, causal=1)


class _Captions:
    """The attributes of a captioned dataset that the text conditioner's factory reads."""

    captions = CAPTIONS


def _conditioner() -> WordTextConditioner:
    cfg = load_config(None, ["data.dataset=shapes", "data.condition=text"])
    return make_conditioner(cfg, _Captions())


def test_condition_text_builds_a_word_conditioner_with_the_defaults():
    assert "text" in CONDITIONERS
    cond = _conditioner()
    assert isinstance(cond, WordTextConditioner)
    assert cond.unet_fields() == {"context_dim": TEXT_DEFAULTS["width"]}
    assert cond.tokenizer.context_length == TEXT_DEFAULTS["context_length"]
    meta = cond.meta()
    assert meta["type"] == "text" and meta["text_encoder"]["kind"] == "word_transformer"


def test_uncaptioned_dataset_is_refused_with_what_to_do():
    class NoCaptions:
        captions = None

    cfg = load_config(None, ["data.dataset=digits", "data.condition=text"])
    with pytest.raises(ValueError, match="caption sidecars"):
        make_conditioner(cfg, NoCaptions())


def test_dropped_captions_get_exactly_the_empty_prompt_states():
    torch.manual_seed(0)
    cond = _conditioner().eval()
    captions = CAPTIONS[:6]
    batch = {"caption": captions, "image": torch.zeros(6, 3, 32, 32)}
    drop = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        ctx = cond(batch, drop)["context"]
        empty = cond.encode_prompts([""])
        kept = cond.encode_prompts(captions)
    assert torch.equal(ctx[drop], empty.expand(3, -1, -1))
    assert torch.equal(ctx[~drop], kept[~drop])


def test_caption_dropout_rate_matches_the_config():
    """The trainer draws the drop mask from its generator: over 20,000 draws at p = 0.1 the rate lies within
    0.01 of p (5 standard deviations of a binomial), and no drops happen when p = 0."""
    from ddpm.training import DiffusionTask

    for p in (0.1, 0.0):
        opts = ["train.batch_size=20000", "data.condition=text", f"data.cond_drop_prob={p}"]
        t = DiffusionTask(load_config(None, opts))
        t.drop_prob = p
        t.shape = (1, 1, 1)
        t.schedule = from_config(t.config.diffusion.schedule_config())
        drop = t.draws(torch.Generator().manual_seed(0), parts=1)["drop"]
        if p == 0.0:
            assert drop is None
        else:
            assert abs(drop.float().mean().item() - p) < 0.01


@pytest.mark.parametrize("causal", [False, True])
def test_conditioner_round_trips_through_its_metadata(causal):
    torch.manual_seed(0)
    overrides = ["data.dataset=shapes", "data.condition=text", f"text.causal={str(causal).lower()}"]
    cond = make_conditioner(load_config(None, overrides), _Captions()).eval()
    assert cond.encoder.config.causal is causal and cond.meta()["text_encoder"]["config"]["causal"] is causal
    again = text_conditioner_from_meta(cond.meta()["text_encoder"]).eval()
    again.load_state_dict(cond.state_dict())
    prompts = ["a small red circle", "a blue square to the left of a green triangle", ""]
    with torch.no_grad():
        assert torch.equal(cond.encode_prompts(prompts), again.encode_prompts(prompts))
    assert again.preview_prompts == cond.preview_prompts and len(again.preview_prompts) == 4
    with pytest.raises(ValueError, match="not supported"):
        text_conditioner_from_meta({"kind": "clip_frozen"})


def test_preview_gives_one_row_per_caption_with_empty_prompt_uncond():
    cond = _conditioner().eval()
    n, c, u, per_row = cond.preview(8, device=torch.device("cpu"))
    assert (n, per_row) == (8, 2)
    assert c["context"].shape == u["context"].shape == (8, 16, TEXT_DEFAULTS["width"])
    assert torch.equal(u["context"][0], u["context"][7])
