"""The autoencoder task of `ddpm train` (run.task = "autoencoder"): a KL autoencoder trained by the shared
`Trainer`, so it gets the same atomic checkpoints, exact resume, EMA, stop signals, DDP and metrics.csv.

| symbol | code             | meaning                                                                  |
| ------ | ---------------- | ------------------------------------------------------------------------ |
| x      | `batch["image"]` | training crops `[B, 3, S, S]` in [-1, 1], S = data.image_size (32)      |
| x_hat  |                  | decoded from z ~ q(z|x), drawn from a generator seeded per step         |
| L      | `vae_loss`       | L_rec + kl_weight * KL(q(z|x) || N(0, I)) (Rombach et al. 2022, App. G)  |
| PSNR   | `psnr` column    | held-out PSNR (dB) of the EMA model's posterior-mean reconstructions     |

Data: data.dataset = "photos" means the crops of scikit-image's `TRAIN_PHOTOS` plus the 200 `lfw_subset`
faces (nothing is downloaded); any other name or folder is read by `ddpm.data.load_dataset` as RGB. The
held-out set is always the crops of `HELD_OUT_PHOTOS` (coffee, chelsea), never trained on.

Files: a checkpoint's model files hold the weights under "vae." with the autoencoder config in the "ddpm"
metadata, so `ema.safetensors` loads with `load_autoencoder_file`. `export_autoencoder` (what
`ddpm export` calls for such a run) adds the latent scaling factor, 1 / std of the latents of the
training images (LDM §4.3.2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..io.images import make_grid, save_png
from ..io.keymaps import MODEL_FILE
from ..io.model_file import FORMAT, VERSION
from ..io.vae_files import save_autoencoder_file, vae_from_state_dict
from ..models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ..models.autoencoder_train import (
    HELD_OUT_PHOTOS,
    TRAIN_PHOTOS,
    estimate_scaling_factor,
    evaluate_psnr,
    face_images,
    photo_crops,
    vae_loss,
)
from .loop import Trainer
from .metrics import FIELDS

__all__ = ["PHOTOS", "DEFAULT_IMAGE_SIZE", "AutoencoderTrainer", "autoencoder_images", "export_autoencoder"]

PHOTOS = "photos"
DEFAULT_IMAGE_SIZE = 32


def autoencoder_images(dataset: str, *, image_size: int, seed: int = 0) -> Tensor:
    """Training images `[N, 3, S, S]` in [-1, 1]: "photos" (photo crops and lfw faces) or any dataset
    name / image folder `ddpm.data.load_dataset` reads, as RGB at `image_size`."""
    if dataset == PHOTOS:
        return torch.cat([photo_crops(TRAIN_PHOTOS, size=image_size), face_images(size=image_size)])
    from ..data import load_dataset

    images, _ = load_dataset(dataset, split="train", image_size=image_size, channels=3, flip=False,
                             seed=seed).as_tensor()
    return images


class AutoencoderTrainer(Trainer):
    """`Trainer` for run.task = "autoencoder": model `AutoencoderKL` from [autoencoder], loss `vae_loss`,
    a held-out PSNR column in metrics.csv, previews of held-out crops over their reconstructions."""

    fixed_on_resume = ("autoencoder.", "data.dataset", "data.image_size", "data.channels", "train.seed")
    metric_fields = (*FIELDS, "psnr")

    def _build_task(self, saved: Config | None) -> None:
        from ..data import TensorImageDataset

        cfg, dc, ac = self.config, self.config.data, self.config.autoencoder
        if dc.condition != "none":
            raise ValueError(f"data.condition = {dc.condition!r} does not apply to an autoencoder, which "
                             "learns from images alone; remove data.condition")
        if dc.channels not in (None, 3):
            raise ValueError(f"data.channels = {dc.channels} but the autoencoder works on RGB images; remove "
                             "data.channels (grey images are replicated to RGB)")
        self.image_size = dc.image_size or DEFAULT_IMAGE_SIZE
        self.ae_config: AutoencoderKLConfig = ac.build()
        f = self.ae_config.downsampling_factor
        if self.image_size % f:
            raise ValueError(f"data.image_size = {self.image_size} is not a multiple of the autoencoder's "
                             f"downsampling factor {f} ({len(ac.channel_mult)} levels); change "
                             "data.image_size or autoencoder.channel_mult")
        if saved is not None:
            self._check_resume_config(saved)
        self.dataset = TensorImageDataset(autoencoder_images(dc.dataset, image_size=self.image_size,
                                                             seed=cfg.train.seed))
        self.shape = (3, self.image_size, self.image_size)
        self._held_out: Tensor | None = None
        torch.manual_seed(cfg.train.seed)
        self.module = AutoencoderKL(self.ae_config)

    def held_out(self) -> Tensor:
        """The held-out crops `[N, 3, S, S]` PSNR is measured on (built once)."""
        if self._held_out is None:
            self._held_out = photo_crops(HELD_OUT_PHOTOS, size=self.image_size)
        return self._held_out

    # ------------------------------------------------------------------------------------ one step
    def _draws(self) -> dict[str, Tensor | None]:
        g, n = self.generator, self.config.train.batch_size
        return {
            "flip": torch.rand(n, generator=g) < 0.5 if self.config.data.flip else None,
            # one seed per micro-batch chunk for its posterior draw z ~ q(z|x), so draws are checkpointed
            "seeds": torch.randint(0, 2**62, (self.source.parts,), generator=g),
        }

    def _micro_loss(self, batch: dict[str, Any], draws: dict[str, Any], sl: slice, part: int) -> Tensor:
        ac, x = self.config.autoencoder, batch["image"]
        if draws["flip"] is not None:
            x = torch.where(draws["flip"][sl].to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        gen = torch.Generator().manual_seed(int(draws["seeds"][part]))
        with self.autocast():
            parts = vae_loss(self.forward, x, kl_weight=ac.kl_weight, reconstruction=ac.reconstruction,
                             generator=gen)
        return parts.loss

    # ----------------------------------------------------------------------------------- outputs
    def _to_file(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {MODEL_FILE.vae + k: v for k, v in state.items()}

    def _from_file(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k[len(MODEL_FILE.vae):]: v for k, v in tensors.items() if k.startswith(MODEL_FILE.vae)}

    def _meta(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": FORMAT,
            "version": VERSION,
            "autoencoder": self.ae_config.to_dict(),
            "data": {"dataset": str(cfg.data.dataset), "image_size": int(self.image_size), "channels": 3,
                     "seed": int(cfg.train.seed)},
            "training": {"step": int(self.step), "run": cfg.run.name, "task": "autoencoder",
                         "kl_weight": float(cfg.autoencoder.kl_weight),
                         "reconstruction": cfg.autoencoder.reconstruction},
        }

    def _extra_metrics(self, *, final: bool) -> dict[str, float]:
        return {"psnr": evaluate_psnr(self.ema.module, self.held_out())}

    @torch.no_grad()
    def preview(self) -> Path | None:
        """Write samples/step-N.png: rows of held-out crops, each over its EMA reconstruction (rank 0)."""
        if not self.env.is_main:
            return None
        x = self.held_out()[: self.config.sample.num].to(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            x_hat, _ = self.ema.module(x, sample=False)
        x, x_hat = x.float().cpu(), x_hat.float().clamp(-1, 1).cpu()
        nrow = min(8, len(x))
        rows = [t for i in range(0, len(x), nrow) for t in (x[i:i + nrow], x_hat[i:i + nrow])]
        grid = make_grid(torch.cat(rows), nrow=nrow)
        info = {"step": self.step, "task": "autoencoder",
                "layout": "held-out crops, each row followed by its reconstructions (posterior mean)"}
        return save_png(self.run_dir / "samples" / f"step-{self.step}.png", grid,
                        {"ddpm": json.dumps(info, sort_keys=True)})


def export_autoencoder(tensors: dict[str, Tensor], meta: dict[str, Any], out: str | Path) -> Path:
    """Write a run's autoencoder as one model file `out` (`load_autoencoder_file` reads it), its
    `scaling_factor` estimated on the run's training images (1 / std of their latents, LDM §4.3.2)."""
    config = AutoencoderKLConfig.from_dict(meta["autoencoder"])
    sd = {k[len(MODEL_FILE.vae):]: v for k, v in tensors.items() if k.startswith(MODEL_FILE.vae)}
    model = vae_from_state_dict(sd, config)
    data = meta.get("data") or {}
    images = autoencoder_images(data.get("dataset", PHOTOS), image_size=int(data.get("image_size", 32)),
                                seed=int(data.get("seed", 0)))
    factor = estimate_scaling_factor(model, images)
    model.config = config.replace(scaling_factor=factor)
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "autoencoder")}
    extra["scaling_factor_estimated_on"] = f"{len(images)} training images of {data.get('dataset', PHOTOS)}"
    return save_autoencoder_file(out, model, meta=extra)
