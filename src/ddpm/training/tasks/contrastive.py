"""The contrastive task (run.task = "contrastive"): CLIP-style image and text encoders learn a joint
embedding from captioned images with the symmetric InfoNCE loss (Radford et al. 2021, Fig. 3).

| symbol | code               | meaning                                                                 |
| ------ | ------------------ | ----------------------------------------------------------------------- |
| x      | `batch["image"]`   | `[B, 3, S, S]` in [-1, 1]                                                |
| c      | `batch["caption"]` | B captions; with `contrastive.hard_negatives`, M edited false captions   |
|        |                    | follow them as extra negatives (`ddpm.data.shapes.hard_negatives`)       |
| tau    | `temperature`      | 1 / e^s, learned (its value is a metrics.csv column)                    |

Data: any captioned dataset (`shapes`, or an image folder with caption sidecars); hard negatives need
captions of the shapes grammar. Model files hold the weights under "image.", "text.", "text_projection."
and "logit_scale", with the encoder configs and the word vocabulary in the metadata's "contrastive"
section (`ddpm.io.clip_files.load_contrastive_file` reads them); `ddpm eval --metric retrieval` measures
them on held-out `shapes` scenes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.shapes import hard_negatives, parse_prompt
from ...io.images import make_grid, save_png
from ...io.model_meta import DataMeta, ModelMeta, TrainingMeta
from ...models.clip_vision import CLIPVisionConfig
from ...models.contrastive import ContrastiveConfig, ContrastiveModel, info_nce
from ...models.small_text_encoder import SmallTextConfig
from ...text.word_tokenizer import WordTokenizer
from .base import Autocast, Task, file_meta

__all__ = ["ContrastiveTask", "contrastive_batch_loss"]

_TEXT_DEFAULTS = {"context_length": 16, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 2, "causal": True}
_PREVIEW = 16


def contrastive_batch_loss(
    model: Callable[..., Any], tokenizer: WordTokenizer, images: Tensor, captions: list[str], *,
    negative_kinds: tuple[str, ...] = (),
) -> Tensor:
    """InfoNCE of one batch: the captions, then each caption's hard negatives of `negative_kinds`."""
    texts = list(captions)
    if negative_kinds:
        for c in captions:
            edits = hard_negatives(c)
            texts.extend(e for kind in negative_kinds if (e := edits[kind]) is not None)
    tok = tokenizer(texts, warn=False)
    dev = images.device
    image_embeds, text_embeds, scale = model(images, tok.input_ids.to(dev), tok.attention_mask.to(dev))
    return info_nce(image_embeds, text_embeds, scale)


class ContrastiveTask(Task):
    """`ContrastiveModel` from [contrastive] and [text], trained with `info_nce` on a captioned dataset."""

    name = "contrastive"
    fixed_on_resume = ("contrastive.", "text.", "data.dataset", "data.image_size", "data.options",
                       "train.seed")
    metric_fields = ("temperature",)

    def prepare(self) -> None:
        from ...data import load_dataset

        cfg, dc, cc = self.config, self.config.data, self.config.contrastive
        if dc.condition == "class":
            raise ValueError("data.condition = 'class' does not apply to run.task = 'contrastive', which "
                             "learns from captions; remove data.condition")
        if dc.channels not in (None, 3):
            raise ValueError(f"data.channels = {dc.channels}: the contrastive image encoder reads RGB; "
                             "remove data.channels")
        self.dataset = load_dataset(dc.dataset, split="train", image_size=dc.image_size, channels=3,
                                    flip=False, seed=cfg.train.seed, **dc.options)
        captions = getattr(self.dataset, "captions", None)
        if not captions or any(c is None for c in captions):
            raise ValueError(f"run.task = 'contrastive' needs a caption for every image; {dc.dataset!r} "
                             "lacks some (add .txt caption sidecars, or use the 'shapes' dataset)")
        if cc.hard_negatives:
            for c in dict.fromkeys(captions):
                try:
                    parse_prompt(c)
                except ValueError as e:
                    raise ValueError(f"contrastive.hard_negatives edits shapes captions, and {c!r} is not "
                                     "one; set contrastive.hard_negatives = [] for other captions") from e
        size = self.dataset.image_size
        if size % cc.patch_size:
            raise ValueError(f"contrastive.patch_size = {cc.patch_size} does not divide the image size "
                             f"{size}; change contrastive.patch_size or data.image_size")
        text = {k: (getattr(cfg.text, k) if getattr(cfg.text, k) is not None else v)
                for k, v in _TEXT_DEFAULTS.items()}
        self.tokenizer = WordTokenizer.from_captions(captions, context_length=int(text["context_length"]))
        vision = CLIPVisionConfig(image_size=size, patch_size=cc.patch_size, width=cc.width,
                                  layers=cc.layers, heads=cc.heads, intermediate=cc.mlp_ratio * cc.width,
                                  projection_dim=cc.embed_dim, act="gelu")
        text_cfg = SmallTextConfig(vocab_size=self.tokenizer.vocab_size, **text)
        self.model_config = ContrastiveConfig(image=vision.to_dict(), text=text_cfg.to_dict(),
                                              temperature=float(cc.temperature))

    def build(self) -> tuple[Any, nn.Module]:
        torch.manual_seed(self.config.train.seed)
        return self.dataset, ContrastiveModel(self.model_config)

    # ------------------------------------------------------------------------------------ one step
    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        return {}  # nothing random in a step: the data order is the loop's

    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        with autocast():
            return contrastive_batch_loss(forward, self.tokenizer, batch["image"], list(batch["caption"]),
                                          negative_kinds=tuple(self.config.contrastive.hard_negatives))

    # ----------------------------------------------------------------------------------- outputs
    def meta(self, *, step: int) -> ModelMeta:
        cfg, ds = self.config, self.dataset
        sections = {
            "data": DataMeta(dataset=str(cfg.data.dataset), image_size=int(ds.image_size), channels=3,
                             options=dict(cfg.data.options), seed=int(cfg.train.seed)),
            "training": TrainingMeta(step=int(step), run=cfg.run.name, task="contrastive"),
        }
        fields = {"data": ("dataset", "image_size", "channels", "options", "seed"),
                  "training": ("step", "run", "task")}
        model = {"contrastive": {"model": self.model_config.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                                 "hard_negatives": list(cfg.contrastive.hard_negatives)}}
        return file_meta(model, sections, fields=fields)

    def check_checkpoint(self, meta: dict[str, Any], *, run_dir: Path) -> None:
        old = ((meta.get("contrastive") or {}).get("tokenizer") or {}).get("vocab")
        if old is not None and list(old) != list(self.tokenizer.vocab):
            raise ValueError(f"cannot resume {run_dir}: its captions changed since the run started, so the "
                             "word vocabulary did too; restore the captions, or start a new run")

    def metrics(self, module: nn.Module) -> dict[str, float]:
        return {"temperature": float(torch.exp(-module.logit_scale.detach().float()))}

    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """The first training images in a grid; the JSON says which caption of the grid's each image ranks
        first (image -> caption retrieval among the grid's own captions)."""
        n = min(_PREVIEW, len(self.dataset))
        images = torch.stack([self.dataset[i]["image"] for i in range(n)]).to(device)
        captions = [self.dataset.captions[i] for i in range(n)]
        tok = self.tokenizer(captions, warn=False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            img, txt, _ = module(images, tok.input_ids.to(device), tok.attention_mask.to(device))
        best = (img.float() @ txt.float().T).argmax(dim=1).tolist()
        ranked = [{"caption": captions[i], "ranked_first": captions[j]} for i, j in enumerate(best)]
        info = {"step": step, "task": "contrastive", "retrieved": ranked,
                "top1": sum(i == j for i, j in enumerate(best)) / n}
        return save_png(path, make_grid(images.float().cpu(), nrow=8), {"ddpm": json.dumps(info)})
