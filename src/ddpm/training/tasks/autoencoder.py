"""The autoencoder task (run.task = "autoencoder"): a KL autoencoder learns to reconstruct real photos.

| symbol | code             | meaning                                                                  |
| ------ | ---------------- | ------------------------------------------------------------------------ |
| x      | `batch["image"]` | training crops `[B, 3, S, S]` in [-1, 1], S = data.image_size (32)       |
| x_hat  |                  | decoded from z ~ q(z|x), drawn from a generator seeded per chunk         |
| L_rec  | `reconstruction` | sum over pixels of (x - x_hat)^2 (L2) or |x - x_hat| (L1), mean over B   |
| L_KL   | `kl`             | KL(q(z|x) || N(0, I)) summed over latent elements, mean over B           |
| L      | `vae_loss`       | L_rec + kl_weight * L_KL; 1e-6 as LDM's kl-f8 (Rombach et al., App. G)   |
| PSNR   | `psnr` column    | held-out PSNR (dB, [0, 1] scale) of the EMA model's posterior mean       |

There is no perceptual (LPIPS) or adversarial term as in LDM, so reconstructions are blurrier than Stable
Diffusion's at equal PSNR; without them L2 is the default, as it optimises PSNR directly (on the held-out
crops of `benchmarks/vae_psnr.py`, a 32-64-64-channel f=4 model, Adam 1e-3, 600 steps of 16: L2 reached
20.8 dB where L1 reached 17.9 dB).

Data: any dataset `ddpm.data.load_dataset` reads, as RGB ("photos" by default); PSNR is always measured on
the crops of `HELD_OUT_PHOTOS`, which "photos" never trains on. Model files hold the weights under "vae."
with the autoencoder config in the metadata; `export` adds the latent scaling factor, 1 / std of the
latents of the training images (LDM §4.3.2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ...data.photos import HELD_OUT_PHOTOS, PHOTO_SIZE, photo_crops
from ...io.images import make_grid, save_png
from ...io.keymaps import MODEL_FILE
from ...io.model_meta import DataMeta, ModelMeta, TrainingMeta
from ...io.vae_files import save_autoencoder_file, vae_from_state_dict
from ...models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from .base import Autocast, Task, file_meta

__all__ = ["AutoencoderTask", "VAELoss", "vae_loss", "psnr", "evaluate_psnr", "estimate_scaling_factor",
           "training_images"]


class VAELoss(NamedTuple):
    """The training objective and its parts (all scalars, means over the batch)."""

    loss: Tensor
    reconstruction: Tensor
    kl: Tensor


def vae_loss(
    model: Callable[..., Any],
    x: Tensor,
    *,
    kl_weight: float = 1e-6,
    reconstruction: str = "l2",
    generator: torch.Generator | None = None,
) -> VAELoss:
    """L_rec + lambda KL(q(z|x) || N(0, I)) for images `[B, 3, H, W]` in [-1, 1], x_hat decoded from a draw
    z ~ q(z|x) (the reparameterised ELBO, Kingma & Welling 2014 Eq. 10, with LDM's weighting)."""
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"reconstruction must be 'l1' or 'l2'; got {reconstruction!r}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
    x_hat, posterior = model(x, sample=True, generator=generator)
    err = x_hat.float() - x.float()
    rec = (err.abs() if reconstruction == "l1" else err.pow(2)).flatten(1).sum(1).mean()
    kl = posterior.kl().float().mean()
    return VAELoss(rec + kl_weight * kl, rec, kl)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image `[B]` between `[B, C, H, W]` images in [-1, 1], measured
    on the [0, 1] scale after clipping to the valid range: 10 log10(1 / MSE)."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs images of the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    a = (x.float().clamp(-1, 1) + 1) / 2
    b = (y.float().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def evaluate_psnr(model: AutoencoderKL, images: Tensor, *, batch_size: int = 64) -> float:
    """Mean PSNR (dB) of reconstructions decoded from the posterior mean of held-out `images`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x_hat, _ = model(x, sample=False)
        scores.append(psnr(x, x_hat).cpu())
    model.train(was_training)
    return float(torch.cat(scores).mean())


@torch.no_grad()
def estimate_scaling_factor(model: AutoencoderKL, images: Tensor, *, batch_size: int = 64) -> float:
    """1 / std of raw latents z ~ q(z|x) over `images`: the factor that gives diffusion unit-variance
    latents (LDM §4.3.2 and App. D.1; 0.18215 for SD 1.x). Store it in `model.config.scaling_factor`."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    zs = [model.encode_posterior(images[i:i + batch_size].to(device)).sample(generator=gen).float().cpu()
          for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).std())


def training_images(dataset: str, *, image_size: int, seed: int = 0) -> Tensor:
    """The training split of `dataset` (a built-in name or an image folder) as RGB `[N, 3, S, S]`."""
    from ...data import load_dataset

    images, _ = load_dataset(dataset, split="train", image_size=image_size, channels=3, flip=False,
                             seed=seed).as_tensor()
    return images


def _unprefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len(MODEL_FILE.vae):]: v for k, v in tensors.items() if k.startswith(MODEL_FILE.vae)}


class AutoencoderTask(Task):
    """`AutoencoderKL` from [autoencoder] trained with `vae_loss`; a held-out PSNR column in metrics.csv and
    previews of held-out crops over their reconstructions."""

    name = "autoencoder"
    fixed_on_resume = ("autoencoder.", "data.dataset", "data.image_size", "data.channels", "train.seed")
    metric_fields = ("psnr",)

    def prepare(self) -> None:
        dc, ac = self.config.data, self.config.autoencoder
        if dc.condition != "none":
            raise ValueError(f"data.condition = {dc.condition!r} does not apply to an autoencoder, which "
                             "learns from images alone; remove data.condition")
        if dc.channels not in (None, 3):
            raise ValueError(f"data.channels = {dc.channels} but the autoencoder works on RGB images; remove "
                             "data.channels (grey images are replicated to RGB)")
        self.image_size = dc.image_size or PHOTO_SIZE
        self.ae_config: AutoencoderKLConfig = ac.build()
        f = self.ae_config.downsampling_factor
        if self.image_size % f:
            raise ValueError(f"data.image_size = {self.image_size} is not a multiple of the autoencoder's "
                             f"downsampling factor {f} ({len(ac.channel_mult)} levels); change "
                             "data.image_size or autoencoder.channel_mult")

    def build(self) -> tuple[Any, nn.Module]:
        from ...data import TensorImageDataset

        seed = self.config.train.seed
        dataset = TensorImageDataset(training_images(self.config.data.dataset, image_size=self.image_size,
                                                     seed=seed))
        self._held_out: Tensor | None = None
        torch.manual_seed(seed)
        return dataset, AutoencoderKL(self.ae_config)

    def held_out(self) -> Tensor:
        """The held-out crops `[N, 3, S, S]` PSNR is measured on (built once)."""
        if self._held_out is None:
            self._held_out = photo_crops(HELD_OUT_PHOTOS, size=self.image_size)
        return self._held_out

    # ------------------------------------------------------------------------------------ one step
    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        n = self.config.train.batch_size
        return {
            "flip": torch.rand(n, generator=generator) < 0.5 if self.config.data.flip else None,
            # one seed per micro-batch chunk for its posterior draw z ~ q(z|x), so draws are checkpointed
            "seeds": torch.randint(0, 2**62, (parts,), generator=generator),
        }

    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        ac, x = self.config.autoencoder, batch["image"]
        if draws["flip"] is not None:
            x = torch.where(draws["flip"][rows].to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        gen = torch.Generator().manual_seed(int(draws["seeds"][part]))
        with autocast():
            return vae_loss(forward, x, kl_weight=ac.kl_weight, reconstruction=ac.reconstruction,
                            generator=gen).loss

    # ----------------------------------------------------------------------------------- outputs
    def to_file(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {MODEL_FILE.vae + k: v for k, v in state.items()}

    def from_file(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return _unprefixed(tensors)

    def meta(self, *, step: int) -> ModelMeta:
        cfg = self.config
        sections = {
            "data": DataMeta(dataset=str(cfg.data.dataset), image_size=int(self.image_size), channels=3,
                             seed=int(cfg.train.seed)),
            "training": TrainingMeta(step=int(step), run=cfg.run.name, task="autoencoder",
                                     kl_weight=float(cfg.autoencoder.kl_weight),
                                     reconstruction=cfg.autoencoder.reconstruction),
        }
        fields = {"data": ("dataset", "image_size", "channels", "seed")}
        return file_meta({"autoencoder": self.ae_config.to_dict()}, sections, fields=fields)

    def metrics(self, module: nn.Module) -> dict[str, float]:
        return {"psnr": evaluate_psnr(module, self.held_out())}

    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """Rows of held-out crops, each over its reconstruction from the posterior mean."""
        x = self.held_out()[: self.config.sample.num].to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x_hat, _ = module(x, sample=False)
        x, x_hat = x.float().cpu(), x_hat.float().clamp(-1, 1).cpu()
        nrow = min(8, len(x))
        rows = [t for i in range(0, len(x), nrow) for t in (x[i:i + nrow], x_hat[i:i + nrow])]
        info = {"step": step, "task": "autoencoder",
                "layout": "held-out crops, each row followed by its reconstructions (posterior mean)"}
        grid = make_grid(torch.cat(rows), nrow=nrow)
        return save_png(path, grid, {"ddpm": json.dumps(info, sort_keys=True)})

    @classmethod
    def export(cls, tensors: dict[str, Tensor], meta: dict[str, Any], out: Path) -> Path:
        """The autoencoder file (`load_autoencoder_file` reads it) with its `scaling_factor` estimated on the
        run's training images."""
        config = AutoencoderKLConfig.from_dict(meta["autoencoder"])
        model = vae_from_state_dict(_unprefixed(tensors), config)
        data = meta.get("data") or {}
        name = data.get("dataset", "photos")
        images = training_images(name, image_size=int(data.get("image_size", PHOTO_SIZE)),
                                 seed=int(data.get("seed", 0)))
        model.config = config.replace(scaling_factor=estimate_scaling_factor(model, images))
        extra = {k: v for k, v in meta.items() if k not in ("format", "version", "autoencoder")}
        extra["scaling_factor_estimated_on"] = f"{len(images)} training images of {name}"
        return save_autoencoder_file(out, model, meta=extra)
