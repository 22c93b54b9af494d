"""`ddpm convert`: .ckpt -> .safetensors keeps every tensor, single file <-> diffusers folder keeps the model
(and round-trips bit for bit), and mistakes or unsafe inputs end in one-line errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from ddpm.cli import main
from ddpm.io.checkpoint import load_state_dict, read_safetensors_header
from ddpm.io.keymaps import SINGLE_FILE, ema_key
from ddpm.io.sd import (
    SETTINGS_META_KEY,
    StableDiffusionModels,
    load_stable_diffusion,
    save_diffusers_folder,
    save_single_file,
)
from ddpm.io.sd_layout import SchedulerConfig
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
from ddpm.models.unet import UNet, UNetConfig
from ddpm.text import CLIPTokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny SD-1.x-shaped model as an LDM `.ckpt` (Lightning nesting, EMA copies, a schedule buffer)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                           num_res_blocks=1, attention_resolutions=(1,), num_heads=8, context_dim=64))
    vae = AutoencoderKL(AutoencoderKLConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=1000, width=64, layers=1, heads=1, intermediate=128))
    sd = {SINGLE_FILE.unet + k: v for k, v in unet.state_dict().items()}
    sd.update({ema_key(k): torch.randn_like(v) for k, v in unet.state_dict().items()})
    sd.update({SINGLE_FILE.vae + k: v for k, v in vae.state_dict().items()})
    sd.update({SINGLE_FILE.text_encoder + k: v for k, v in text.state_dict().items()})
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, path)
    return path, sd


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ckpt_to_safetensors_copies_every_tensor(ckpt, tmp_path, capsys):
    path, sd = ckpt
    out = tmp_path / "tiny.safetensors"
    code, stdout, err = _run(capsys, "convert", path, out)
    assert code == 0, err
    assert f"{len(sd)} tensors copied" in stdout
    got = load_state_dict(out)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    code, _, _ = _run(capsys, "convert", path, tmp_path / "half.safetensors", "--half")
    with safe_open(str(tmp_path / "half.safetensors"), framework="pt") as f:
        assert f.get_tensor(SINGLE_FILE.unet + "out.2.weight").dtype == torch.float16
    # A float16 source stays float16 through a model conversion (loaded as float32 in between).
    assert _run(capsys, "convert", tmp_path / "half.safetensors", tmp_path / "half_folder")[0] == 0
    assert _run(capsys, "convert", tmp_path / "half_folder", tmp_path / "half2.safetensors")[0] == 0
    first = load_state_dict(tmp_path / "half.safetensors")
    second = load_state_dict(tmp_path / "half2.safetensors")
    key = SINGLE_FILE.unet + "out.2.weight"
    assert second[key].dtype == torch.float16 and torch.equal(second[key], first[ema_key("out.2.weight")])


def test_single_file_to_folder_and_back_round_trips_bit_for_bit(ckpt, tmp_path, capsys):
    path, sd = ckpt
    assert _run(capsys, "convert", path, tmp_path / "one", "--to", "folder")[0] == 0
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "one" / part).is_dir(), part
    assert _run(capsys, "convert", tmp_path / "one", tmp_path / "a.safetensors")[0] == 0
    assert _run(capsys, "convert", tmp_path / "a.safetensors", "--to", "folder", tmp_path / "two")[0] == 0
    assert _run(capsys, "convert", tmp_path / "two", tmp_path / "b.safetensors")[0] == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    models = load_stable_diffusion(tmp_path / "b.safetensors")
    # The model conversions keep the EMA weights of the UNet, which the .ckpt preferred.
    assert torch.equal(models.unet.out[2].weight, sd[ema_key("out.2.weight")])
    assert torch.equal(models.vae.decoder.conv_out.weight, sd[SINGLE_FILE.vae + "decoder.conv_out.weight"])


def test_prediction_and_no_ema_are_recorded(ckpt, tmp_path, capsys):
    path, sd = ckpt
    out = tmp_path / "v.safetensors"
    assert _run(capsys, "convert", path, out, "--prediction", "v", "--no-ema")[0] == 0
    assert '"prediction": "v"' in read_safetensors_header(out)["__metadata__"]["ddpm.scheduler"]
    models = load_stable_diffusion(out)
    assert models.scheduler.prediction == "v"
    assert torch.equal(models.unet.out[2].weight, sd[SINGLE_FILE.unet + "out.2.weight"])


def _models(*, text_width: int, text_heads: int, unet_head_channels: int | None = None):
    """A tiny SD model; with the defaults, one whose configs its single file's shapes show in full."""
    torch.manual_seed(1)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                           num_res_blocks=1, attention_resolutions=(1,), num_heads=8, context_dim=text_width,
                           num_head_channels=unet_head_channels))
    vae = AutoencoderKL(AutoencoderKLConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=1000, width=text_width, layers=1, heads=text_heads,
                                        intermediate=64, pad_token_id=999))
    return StableDiffusionModels(unet, vae, text, CLIPTokenizer.from_bpe_file(), SchedulerConfig(), "", "")


def test_configs_the_shapes_cannot_show_travel_in_the_single_file(tmp_path, capsys):
    """A text encoder 32 wide with 4 heads (CLIP's are 64 wide), UNet heads of 16 channels and a sample size
    of 16: the single file records them, so it loads back as the model it came from and converts on."""
    save_diffusers_folder(_models(text_width=32, text_heads=4, unet_head_channels=16), tmp_path / "folder")
    (tmp_path / "folder" / "unet" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "folder" / "unet" / "config.json").read_text()), "sample_size": 16}))
    models = load_stable_diffusion(tmp_path / "folder")
    assert models.sample_size == 16
    assert _run(capsys, "convert", tmp_path / "folder", tmp_path / "one.safetensors")[0] == 0
    meta = read_safetensors_header(tmp_path / "one.safetensors")["__metadata__"]
    assert set(meta) == {SETTINGS_META_KEY}  # one entry: the file stays byte-reproducible
    assert set(json.loads(meta[SETTINGS_META_KEY])) == {"scheduler", "sample_size", "unet", "text_encoder"}
    back = load_stable_diffusion(tmp_path / "one.safetensors")
    assert back.text_config == models.text_config and back.unet_config == models.unet_config
    assert back.vae_config == models.vae_config and back.sample_size == 16
    assert _run(capsys, "convert", tmp_path / "one.safetensors", "--to", "folder", tmp_path / "two")[0] == 0
    again = load_stable_diffusion(tmp_path / "two")
    assert again.text_config == models.text_config and again.sample_size == 16
    for name, p in models.text_encoder.state_dict().items():
        assert torch.equal(again.text_encoder.state_dict()[name], p), name


def test_a_model_the_shapes_describe_keeps_the_plain_scheduler_entry(tmp_path):
    models = _models(text_width=64, text_heads=1)
    save_single_file(models, tmp_path / "plain.safetensors")
    assert set(read_safetensors_header(tmp_path / "plain.safetensors")["__metadata__"]) == {"ddpm.scheduler"}
    assert load_stable_diffusion(tmp_path / "plain.safetensors").text_config == models.text_config


def _one_line_error(result, *fragments):
    code, _, err = result
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("ddpm convert: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_mistakes_and_unsafe_inputs_are_one_line_errors(ckpt, tmp_path, capsys):
    path, _ = ckpt
    _one_line_error(_run(capsys, "convert", tmp_path / "missing.ckpt", tmp_path / "x.safetensors"), "no such")
    _one_line_error(_run(capsys, "convert", path, tmp_path / "x.ckpt", "--to", "file"), ".safetensors")
    (tmp_path / "taken.safetensors").write_bytes(b"")
    _one_line_error(_run(capsys, "convert", path, tmp_path / "taken.safetensors"), "--force")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    _one_line_error(_run(capsys, "convert", path, tmp_path / "docs", "--force"), "not a diffusers folder")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload()}, evil)
    _one_line_error(_run(capsys, "convert", evil, tmp_path / "evil.safetensors"), "refused")
    _one_line_error(_run(capsys, "convert", evil, tmp_path / "evil_folder"), "refused")
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()
