"""A tiny random Stable Diffusion 1.x diffusers folder for the tests (SD pipeline parity, the web server):
a 2-level UNet with cross-attention (context 64), a 2-level VAE (factor 2) and a 2-layer CLIP text model,
every parameter random, and CLIP's real tokenizer files written from the packaged BPE. Needs diffusers and
transformers (test-only)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import torch
from torch import nn

BPE = Path(__file__).resolve().parents[1] / "src" / "ddpm" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT = 64
SIZE = 32  # pixels; latents 16x16 (the tiny VAE downsamples by 2)
SD1 = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random values in every parameter (as tests/test_sd_loading.py does: zero-init layers hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def write_tokenizer(folder: Path, pad_token: str | None = None) -> int:
    """vocab.json + merges.txt from the packaged BPE by CLIP's recipe; `pad_token` (e.g. "!" as SD 2's and
    the x4 upscaler's tokenizers pad) in special_tokens_map.json. Returns the vocabulary size."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    lines = gzip.open(BPE, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    tokens = symbols + [s + "</w>" for s in symbols] + [line.replace(" ", "") for line in lines]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    if pad_token is not None:
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": pad_token}
        (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}), encoding="utf-8")
    return len(tokens)


def components(in_channels: int = 4):
    """Random diffusers UNet, VAE and CLIP text model, tiny (seeds 1, 2, 3)."""
    import diffusers
    import transformers

    unet = randomize(
        diffusers.UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=CONTEXT,
            attention_head_dim=8,
            norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),
        seed=1,
    )
    vae = randomize(
        diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=SIZE,
        ),
        seed=2,
    )
    text = randomize(
        transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                vocab_size=49408,
                hidden_size=CONTEXT,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=1,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=2,
                pad_token_id=1,
            )
        ),
        seed=3,
    )
    return unet, vae, text


def save_folder(root: Path, unet, vae, text, pipeline: str) -> Path:
    """A diffusers folder of the components with SD 1.x's PNDM scheduler config."""
    import diffusers

    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **SD1)
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": pipeline,
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "PNDMScheduler"],
            }
        )
    )
    return root


def tiny_sd_folder(root: Path) -> Path:
    """The tiny random SD 1.x txt2img folder under `root` (the one tests/test_sd_pipeline.py compares)."""
    torch.manual_seed(0)
    unet, vae, text = components()
    return save_folder(root, unet, vae, text, "StableDiffusionPipeline")


def shared_tiny_sd_folder(tmp_path_factory) -> Path:
    """One tiny SD folder per test session (built on first use), for the modules that only read it."""
    root = tmp_path_factory.getbasetemp() / "shared-tiny-sd"
    if not (root / "model_index.json").is_file():
        tiny_sd_folder(root)
    return root
