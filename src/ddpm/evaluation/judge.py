"""The judge: a small CNN classifier trained by the project on a labelled dataset, whose penultimate
layer is the feature space of the Fréchet distance and whose predictions score class-conditional samples.

It plays the role Inception-v3 plays for FID (Heusel et al. 2017) on datasets where no pretrained network
exists offline. Training is deterministic (fixed seeds, its own generators, one thread so the result does
not depend on the core count) and the result is cached on disk under a name that hashes the training recipe
and the exact training data, so every run of `ddpm eval` judges with the same net.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["JudgeRecipe", "JudgeNet", "Judge", "train_judge", "judge_for_tensors", "cache_dir"]

# Bump when JudgeNet or the training procedure changes, so stale cached judges are not reused.
_CODE_VERSION = 1


@dataclass(frozen=True)
class JudgeRecipe:
    """Everything that decides the judge's weights besides the data; part of its cache key."""

    width: int = 32
    feature_dim: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: float = 1.5  # pixels; random translation, rotation and scale make the judge robust
    max_rotate: float = 10.0  # degrees
    max_scale: float = 0.1
    dropout: float = 0.2
    seed: int = 0


class JudgeNet(nn.Module):
    """Conv(3x3) x2 -> pool -> Conv(3x3) x2 -> pool -> adaptive 4x4 pool -> Linear(feature_dim) -> classes."""

    def __init__(
        self, channels: int, num_classes: int, *, width: int = 32, feature_dim: int = 64, dropout: float = 0.2
    ) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations `[B, feature_dim]` of images `[B, C, H, W]` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits `[B, num_classes]`."""
        return self.head(self.drop(self.features(x)))


def _augment(x: Tensor, recipe: JudgeRecipe, generator: torch.Generator) -> Tensor:
    """Random similarity transform per image (rotation, scale, shift), border padding, bilinear."""
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator, dtype=x.dtype) * 2 - 1
    angle = u[:, 0] * math.radians(recipe.max_rotate)
    scale = 1 + u[:, 1] * recipe.max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size.
    tx, ty = u[:, 2] * recipe.max_shift * 2 / w, u[:, 3] * recipe.max_shift * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_judge(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    recipe: JudgeRecipe = JudgeRecipe(),
    progress: bool = False,
) -> JudgeNet:
    """Train a `JudgeNet` on images `[N, C, H, W]` in [-1, 1] with int `labels` `[N]`, deterministically."""
    images, labels = images.float().cpu(), labels.long().cpu()
    gen = torch.Generator().manual_seed(recipe.seed)
    threads = torch.get_num_threads()
    # CPU kernels split reductions by thread, so the weights would depend on the core count; one thread
    # makes them a function of the recipe and data alone (about 15 s for digits, once, then cached).
    torch.set_num_threads(1)
    try:
        return _train(images, labels, num_classes=num_classes, recipe=recipe, gen=gen, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    recipe: JudgeRecipe,
    gen: torch.Generator,
    progress: bool,
) -> JudgeNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # weight init and dropout draw from the global generator
        net = JudgeNet(
            images.shape[1],
            num_classes,
            width=recipe.width,
            feature_dim=recipe.feature_dim,
            dropout=recipe.dropout,
        )
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        n = images.shape[0]
        steps_per_epoch = math.ceil(n / recipe.batch_size)
        total = recipe.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="training the judge", leave=False)
        net.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, recipe.batch_size):
                idx = order[i : i + recipe.batch_size]
                x = _augment(images[idx], recipe, gen)
                loss = F.cross_entropy(net(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
    return net.eval()


class Judge:
    """A trained judge with its description (`info`: dataset, recipe, test accuracy, cache key)."""

    def __init__(self, net: JudgeNet, info: dict[str, Any]) -> None:
        self.net = net.eval()
        self.info = info

    @property
    def test_accuracy(self) -> float:
        """Accuracy of the judge on the real held-out images it was checked on."""
        return float(self.info["test_accuracy"])

    def _check(self, images: Tensor) -> Tensor:
        shape = (self.info["channels"], self.info["image_size"], self.info["image_size"])
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(
                f"the judge of {self.info['dataset']!r} takes images [N, {', '.join(map(str, shape))}], "
                f"got {list(images.shape)}; evaluate a model trained at that size and channel count"
            )
        return images.detach().float().cpu()

    @torch.no_grad()
    def _map(self, fn: Any, images: Tensor, batch_size: int) -> Tensor:
        images = self._check(images)
        outs = [fn(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs) if outs else images.new_zeros(0)

    def features(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        """Penultimate features `[N, D]` of images `[N, C, H, W]` in [-1, 1]."""
        return self._map(self.net.features, images, batch_size)

    def logits(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        """Class logits `[N, K]`."""
        return self._map(self.net, images, batch_size)

    def predict(self, images: Tensor, *, batch_size: int = 256) -> Tensor:
        """Predicted class indices `[N]`."""
        return self.logits(images, batch_size=batch_size).argmax(1)


def cache_dir() -> Path:
    """Where judges are cached: $DDPM_CACHE/classifiers, else ~/.cache/ddpm/classifiers."""
    root = os.environ.get("DDPM_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "ddpm"
    return base / "classifiers"


def _cache_key(recipe: JudgeRecipe, *tensors: Tensor) -> str:
    h = hashlib.sha256(json.dumps({"code": _CODE_VERSION, **asdict(recipe)}, sort_keys=True).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _save_atomic(path: Path, net: JudgeNet, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from ..io.atomic import atomic_write

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"ddpm_judge": json.dumps(info)})


def _load(path: Path) -> Judge:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["ddpm_judge"])
    r = JudgeRecipe(**info["recipe"])
    net = JudgeNet(
        info["channels"], info["num_classes"], width=r.width, feature_dim=r.feature_dim, dropout=r.dropout
    )
    net.load_state_dict(load_file(str(path)))
    return Judge(net, info)


def judge_for_tensors(
    name: str,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    class_names: list[str] | None = None,
    recipe: JudgeRecipe = JudgeRecipe(),
    cache: Path | str | None = None,
    progress: bool = False,
) -> Judge:
    """The judge for this exact training data and recipe: loaded from the cache, else trained, scored on
    the test images and cached (written atomically)."""
    if train_images.ndim != 4 or train_images.shape[-1] != train_images.shape[-2]:
        raise ValueError(f"the judge trains on square images [N, C, H, W], got {list(train_images.shape)}")
    key = _cache_key(recipe, train_images, train_labels)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    path = Path(cache) if cache is not None else cache_dir()
    path = path / f"{safe_name}-{key}.safetensors"
    if path.exists():
        try:
            return _load(path)
        except Exception:  # a foreign or damaged file under our name: retrain and overwrite it
            pass
    net = train_judge(train_images, train_labels, num_classes=num_classes, recipe=recipe, progress=progress)
    with torch.no_grad():
        pred = torch.cat(
            [net(test_images[i : i + 256].float()).argmax(1) for i in range(0, len(test_images), 256)]
        )
    acc = float((pred == test_labels.long()).float().mean()) if len(test_labels) else float("nan")
    info = {
        "dataset": name,
        "key": key,
        "recipe": asdict(recipe),
        "channels": int(train_images.shape[1]),
        "image_size": int(train_images.shape[-1]),
        "num_classes": int(num_classes),
        "class_names": class_names,
        "num_train": int(train_images.shape[0]),
        "num_test": int(test_images.shape[0]),
        "test_accuracy": acc,
    }
    _save_atomic(path, net, info)
    return Judge(net, info)
