"""CLIP text encoder: the SD 1.5 layout (keys, shapes, 123.06M parameters) and numerical parity with
transformers' CLIPTextModel on tiny random configs saved and loaded the ways checkpoints come."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm.io.keymaps import SINGLE_FILE, strip_prefix
from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel

transformers = pytest.importorskip("transformers")

KEYS_JSON = Path(__file__).parent / "data" / "sd15_single_file_keys.json"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_sd15_layout_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig())
    data = json.loads(KEYS_JSON.read_text())
    expected = strip_prefix(data["keys"], SINGLE_FILE.text_encoder)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert model.num_parameters() == data["params"]["text_encoder"] == 123_060_480
    assert not list(model.buffers())  # no persistent position_ids


# Two tiny reference configs: the legacy SD 1.x pooling rule (eos_token_id 2 in the config means
# "argmax of the ids") with quick-GELU, and a configured EOS id with exact GELU, where argmax and the
# first EOS differ because ids above the EOS id occur in the prompts.
REFERENCE_CONFIGS = {
    "argmax_quick_gelu": dict(eos_token_id=2, hidden_act="quick_gelu", pad_token_id=999),
    "eos_id_gelu": dict(eos_token_id=500, hidden_act="gelu", pad_token_id=0),
}


def _reference_model(name: str) -> transformers.CLIPTextModel:
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=998, **REFERENCE_CONFIGS[name],
    )
    model = transformers.CLIPTextModel(cfg).eval()
    with torch.no_grad():  # make the layer norms non-trivial so their parameters are checked too
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[transformers.CLIPTextModel, Path]]:
    """Each reference model with the folder `save_pretrained` wrote it to (built once per module)."""
    out = {}
    for name in REFERENCE_CONFIGS:
        model = _reference_model(name)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


def _prompts(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ids `[3, 77]` laid out as the tokenizer would (BOS, tokens, EOS, padding) and their mask."""
    g = torch.Generator().manual_seed(1)
    eos, pad = (999, 999) if name == "argmax_quick_gelu" else (500, 0)
    ids = torch.full((3, 77), pad, dtype=torch.long)
    mask = torch.zeros(3, 77, dtype=torch.long)
    for row, n in enumerate((5, 30, 75)):
        content = torch.randint(1, 998, (n,), generator=g)
        content[content == eos] = 7
        ids[row, : n + 2] = torch.cat([torch.tensor([998]), content, torch.tensor([eos])])
        mask[row, : n + 2] = 1
    return ids, mask


def _load_ours(folder: Path, layout: str) -> CLIPTextModel:
    config = CLIPTextConfig.from_transformers(json.loads((folder / "config.json").read_text()))
    weights = load_file(folder / "model.safetensors")
    if layout == "text_model_prefix":  # how SD 1.x checkpoints and transformers 4 wrote them
        assert not any(k.startswith("text_model.") for k in weights)  # transformers 5 writes no such level
        weights = {"text_model." + k: v for k, v in weights.items()}
        weights["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    model = CLIPTextModel(config).eval()
    model.load_state_dict(weights)
    return model


@pytest.mark.parametrize("layout", ["as_saved", "text_model_prefix"])
@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_outputs_match_transformers(saved, name, layout):
    reference, folder = saved[name]
    ours = _load_ours(folder, layout)
    ids, mask = _prompts(name)
    if name == "eos_id_gelu":
        assert not torch.equal(ids.argmax(-1), (ids == 500).int().argmax(-1))  # the two rules differ here
    with torch.no_grad():
        ref = reference(input_ids=ids, output_hidden_states=True)
        out = ours(ids, output_hidden_states=True)
        short = ours(ids[:2, :40]).last_hidden_state  # rows whose EOS lies within the first 40 positions
        ref_short = reference(input_ids=ids[:2, :40]).last_hidden_state
    assert _rel_err(out.last_hidden_state, ref.last_hidden_state) < 1e-5
    assert _rel_err(out.pooled, ref.pooler_output) < 1e-5
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    assert max(_rel_err(a, b) for a, b in zip(out.hidden_states, ref.hidden_states)) < 1e-5
    assert _rel_err(short, ref_short) < 1e-5


def test_clip_skip_and_attention_mask_match_transformers(saved):
    reference, folder = saved["argmax_quick_gelu"]
    ours = _load_ours(folder, "as_saved")
    ids, mask = _prompts("argmax_quick_gelu")
    with torch.no_grad():
        ref = reference(input_ids=ids, output_hidden_states=True)
        # diffusers' clip_skip=1: the penultimate layer's output through the final layer norm
        ref_skip = reference.final_layer_norm(ref.hidden_states[-2])
        skip_tokens, _ = ours.encode(ids, clip_skip=1)
        masked = ours(ids, attention_mask=mask).last_hidden_state
        ref_masked = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert _rel_err(skip_tokens, ref_skip) < 1e-5
    keep = mask.bool()  # padded positions are never read by the UNet's consumers of a mask
    assert _rel_err(masked[keep], ref_masked[keep]) < 1e-5
    assert _rel_err(masked[keep], ours(ids).last_hidden_state.detach()[keep]) < 1e-5  # causal: pads unseen


def test_our_weights_load_into_transformers(tmp_path):
    """The layout we write is one transformers (and so diffusers) reads: same outputs both ways."""
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=1000, width=64, layers=2, heads=4, intermediate=96, pad_token_id=999)
    ours = CLIPTextModel(config).eval()
    save_file(ours.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_transformers()))
    reference = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()
    ids, _ = _prompts("argmax_quick_gelu")
    with torch.no_grad():
        tokens, pooled = ours.encode(ids)
        ref = reference(input_ids=ids)
    assert _rel_err(tokens, ref.last_hidden_state) < 1e-5 and _rel_err(pooled, ref.pooler_output) < 1e-5


def test_single_file_prefix_and_position_ids_load_inside_a_parent_module():
    config = CLIPTextConfig(vocab_size=50, width=16, layers=2, heads=2, intermediate=32, max_positions=8)
    source = CLIPTextModel(config)
    state = {"transformer." + k: v for k, v in source.state_dict().items()}
    state["transformer.text_model.embeddings.position_ids"] = torch.arange(8)[None]
    parent = nn.Module()
    parent.transformer = CLIPTextModel(config)
    parent.load_state_dict(state)  # strict: the hook dropped position_ids and nothing else is left over
    for k, v in source.state_dict().items():
        assert torch.equal(parent.transformer.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="Unexpected"):
        parent.load_state_dict({**state, "transformer.text_model.extra": torch.zeros(1)})


def test_causal_mask_and_pooling_rules():
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=50, width=16, layers=2, heads=2, intermediate=32)).eval()
    ids = torch.tensor([[48, 5, 6, 7, 49, 49, 49], [48, 9, 49, 49, 49, 49, 49]])
    changed = ids.clone()
    changed[:, 3] = 11
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a.last_hidden_state[:, :3], b.last_hidden_state[:, :3])  # the future is unseen
    assert not torch.allclose(a.last_hidden_state[0, 3], b.last_hidden_state[0, 3])
    assert torch.equal(a.pooled, a.last_hidden_state[[0, 1], [4, 2]])  # argmax = first EOS (id 49)
    eos_model = CLIPTextModel(CLIPTextConfig(vocab_size=50, width=16, layers=2, heads=2, intermediate=32,
                                             eos_token_id=20)).eval()
    eos_ids = torch.tensor([[48, 30, 20, 0, 0], [48, 20, 0, 0, 0]])
    with torch.no_grad():
        out = eos_model(eos_ids)
    assert torch.equal(out.pooled, out.last_hidden_state[[0, 1], [2, 1]])
    with pytest.raises(ValueError, match="EOS id 20"):
        eos_model(torch.tensor([[48, 30, 0]]))


def test_config_round_trips_and_rejects_bad_values():
    config = CLIPTextConfig(width=32, layers=2, heads=4, intermediate=64, act="gelu", eos_token_id=49407)
    assert CLIPTextConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert CLIPTextConfig.from_transformers(config.to_transformers()) == config
    assert CLIPTextConfig.from_transformers(CLIPTextConfig().to_transformers()) == CLIPTextConfig()
    assert CLIPTextConfig.from_transformers({"text_config": config.to_transformers()}) == config
    with pytest.raises(ValueError, match="unknown CLIPTextConfig key"):
        CLIPTextConfig.from_dict({"hidden_size": 768})
    with pytest.raises(ValueError, match="must divide"):
        CLIPTextConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="act must be one of"):
        CLIPTextConfig(act="relu")
    with pytest.raises(ValueError, match="positive int"):
        CLIPTextConfig(layers=0)


def test_bad_inputs_raise_clear_errors():
    model = CLIPTextModel(CLIPTextConfig(vocab_size=50, width=16, layers=2, heads=2, intermediate=32,
                                         max_positions=8))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="max_positions=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="clip_skip"):
        model(torch.zeros(1, 4, dtype=torch.long), clip_skip=2)
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
