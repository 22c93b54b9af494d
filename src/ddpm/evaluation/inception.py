"""The FID Inception-v3: the 2015 TensorFlow graph (Szegedy et al. 2016, "Rethinking the Inception
architecture") whose pool3 features FID is defined on (Heusel et al. 2017), in plain PyTorch.

The graph differs from torchvision's Inception3 in four places, all kept here:

| where                          | the 2015 graph                                                       |
| ------------------------------ | -------------------------------------------------------------------- |
| pool branch of A, C, E blocks  | 3x3 average pool that does not count the zero padding               |
| pool branch of the last E block| a 3x3 *max* pool (stride 1, pad 1), not an average pool              |
| head                           | 1008 classes (1000 ImageNet + 8 unused), `fc` on the 2048-d pool     |
| input                          | 299 x 299, values scaled to [-1, 1]                                  |

Feature sizes as pytorch-fid's blocks: 64 (after the first max pool), 192 (the second), 768 (input of the
auxiliary classifier, after Mixed_6e), 2048 (the final average pool, "pool3": the FID features).

Two input recipes (`RESIZE_MODES`), each exactly one library's:

| mode          | resize to 299 of uint8 values v                                  | scaling to [-1, 1] |
| ------------- | ---------------------------------------------------------------- | ------------------ |
| `tf`          | TF1 `resize_bilinear` (align_corners=False, no half-pixel shift) | (v - 128) / 128    |
|               | of v in [0, 255] (torch-fidelity; the original TF FID code)      |                    |
| `pytorch-fid` | `F.interpolate` bilinear (half-pixel centres) of v / 255         | 2 (v / 255) - 1    |

Weights are the user's file (`load_inception`): nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DIMS",
    "RESIZE_MODES",
    "WEIGHTS_ENV",
    "WEIGHTS_FILES",
    "FIDInceptionV3",
    "resize_tf1_bilinear",
    "load_inception",
    "weights_path",
]

DIMS = (64, 192, 768, 2048)
RESIZE_MODES = ("tf", "pytorch-fid")
SIZE = 299
WEIGHTS_ENV = "DDPM_INCEPTION_WEIGHTS"
WEIGHTS_FILES = {
    "pytorch-fid": "pt_inception-2015-12-05-6726825d.pth",
    "torch-fidelity": "weights-inception-2015-12-05-6726825d.pth",
}
WHERE = (
    f"ddpm downloads nothing: get {WEIGHTS_FILES['pytorch-fid']} from pytorch-fid's GitHub releases "
    f"(release 'fid_weights') or {WEIGHTS_FILES['torch-fidelity']} from torch-fidelity's GitHub releases "
    f"(v0.2.0), then pass it with --weights FILE or set {WEIGHTS_ENV}=FILE"
)


# ----------------------------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------------------------


def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (lo, hi) and weights of TF1's bilinear resize along one axis: src = i * n_in / n_out."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)  # in float32, as TF computes it
    src = torch.arange(n_out, dtype=torch.float32, device=device) * scale
    lo = src.long()  # src >= 0, so truncation is the floor
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, src - lo.float()


def resize_tf1_bilinear(x: Tensor, size: int = SIZE) -> Tensor:
    """`[B, C, H, W]` float -> `[B, C, size, size]` as TensorFlow 1's `resize_bilinear(align_corners=False)`.

    The source coordinate of output pixel i is i * H / size (no half-pixel shift), its two neighbours are
    floor and floor + 1 (clamped at the edge); columns are blended first, then rows, in float32.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float tensor [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    y0, y1, dy = _tf1_axis(h, size, x.device)
    x0, x1, dx = _tf1_axis(w, size, x.device)
    top, bottom = x.index_select(2, y0), x.index_select(2, y1)
    dx = dx.to(x.dtype)
    top = top.index_select(3, x0) + (top.index_select(3, x1) - top.index_select(3, x0)) * dx
    bottom = bottom.index_select(3, x0) + (bottom.index_select(3, x1) - bottom.index_select(3, x0)) * dx
    return top + (bottom - top) * dy.to(x.dtype).view(-1, 1)


def prepare(images: Tensor, resize: str) -> Tensor:
    """uint8 (or float in [0, 255]) RGB `[B, 3, H, W]` -> the network input `[B, 3, 299, 299]` in [-1, 1]."""
    x = images.float()
    if resize == "tf":
        return (resize_tf1_bilinear(x) - 128) / 128
    if resize == "pytorch-fid":
        x = x / 255
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    raise ValueError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, as the TF graph) -> ReLU; `fold()` merges the BN for speed."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold(self) -> None:
        """conv(x) * g / sqrt(var + eps) + (b - mean * g / sqrt(var + eps)) as one conv with a bias."""
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, bias=True).to(conv.weight)  # fmt: skip
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


def _avg3(x: Tensor) -> Tensor:
    """The graph's 3x3 stride-1 average pool: zero padding is not counted in the mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | max/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7s: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg-1x1."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):  # fmt: skip
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 3x3s: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

    `max_pool`: the 2015 graph's last block (Mixed_7c) pools by max, the one before it by average.
    """

    def __init__(self, c_in: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3. `forward(x)` takes the prepared input `[B, 3, 299, 299]` in [-1, 1] and returns
    the `dims` features `[B, dims]` (or the 1008 logits with `dims="logits"`); `features(images)` takes uint8
    RGB images of any size and prepares them with `resize`."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.layout = "random"  # which weights file it holds (set by load_inception)
        self.has_head = True  # False for weights without the 1008-class layer (pytorch-fid's wrapper)

    def forward(self, x: Tensor, dims: int | str = 2048) -> Tensor:
        if dims not in (*DIMS, "logits"):
            raise ValueError(f"dims must be one of {', '.join(map(str, DIMS))} (or 'logits'), got {dims!r}")
        if dims == "logits" and not self.has_head:
            raise ValueError(f"the weights ({self.layout} layout) have no 1008-class layer; no logits")

        def pooled(t: Tensor) -> Tensor:
            return t.mean((2, 3))

        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # [B, 64, 73, 73]
        if dims == 64:
            return pooled(x)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # [B, 192, 35, 35]
        if dims == 192:
            return pooled(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):  # fmt: skip
            x = block(x)  # -> [B, 768, 17, 17]
        if dims == 768:
            return pooled(x)
        x = pooled(self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))))  # [B, 2048]: pool3
        return x if dims == 2048 else self.fc(x)

    @torch.inference_mode()
    def features(self, images: Tensor, *, dims: int | str = 2048, resize: str = "tf") -> Tensor:
        """uint8 RGB `[B, 3, H, W]` -> features `[B, dims]` float32 (on the CPU)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        p = next(self.parameters())
        x = prepare(images.to(p.device), resize).to(p.dtype)
        if p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self(x, dims).float().cpu()

    def fold_batchnorm(self) -> FIDInceptionV3:
        """Merge every BatchNorm into its conv (inference only; the state dict no longer loads)."""
        for m in self.modules():
            if isinstance(m, BasicConv2d) and isinstance(m.bn, nn.BatchNorm2d):
                m.fold()
        return self


# ----------------------------------------------------------------------------------------------
# Loading a weights file
# ----------------------------------------------------------------------------------------------


def weights_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file: `weights`, else $DDPM_INCEPTION_WEIGHTS; a clear error if neither names a file."""
    given = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if given is None:
        raise FileNotFoundError(f"FID needs the Inception-v3 weights file and none was given; {WHERE}")
    path = Path(given).expanduser()
    source = "--weights" if weights is not None else WEIGHTS_ENV
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"the Inception weights file {path} ({source}) {what}; {WHERE}")
    return path


def load_state(model: FIDInceptionV3, state_dict: dict[str, Tensor], *, source: str = "state dict") -> str:
    """Load a state dict in any layout of `ddpm.io.inception_keys` into `model`; returns the layout."""
    from ..io.inception_keys import to_ours

    ours, layout = to_ours(state_dict)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith(".num_batches_tracked")}
    optional = {"fc.weight", "fc.bias"} if layout == "pytorch-fid-module" else set()
    missing = [k for k in expected if k not in ours and k not in optional]
    unexpected = [k for k in ours if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(f"{source} is not an FID Inception-v3 weights file: its keys have "
                         f"{'; '.join(parts)}. {WHERE}")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in ours.items() if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"{source}: tensors of the wrong shape for the FID Inception-v3: "
                         f"{', '.join(wrong[:3])}")
    if optional:  # the wrapper's files stop at pool3: no class head
        nn.init.zeros_(model.fc.weight)
        nn.init.zeros_(model.fc.bias)
    model.load_state_dict(ours, strict=False)  # checked above; BN counters are not weights
    model.layout = layout
    model.has_head = not optional
    return layout


def load_inception(
    weights: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> FIDInceptionV3:
    """The FID Inception-v3 with the user's weights (`weights`, else $DDPM_INCEPTION_WEIGHTS), in eval mode
    on `device`, in channels-last layout; `fold` merges the BatchNorms into the convs (same features to float
    round-off, faster)."""
    from ..io.checkpoint import load_state_dict

    path = weights_path(weights)
    with torch.device("meta"):  # no random initialisation of weights that are about to be replaced
        model = FIDInceptionV3()
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.zero_()
    load_state(model, load_state_dict(path, nonfinite="error"), source=str(path))
    model.eval().requires_grad_(False)
    if fold:
        model.fold_batchnorm()
    # channels-last convolutions: about 1.4x the images/s of the default layout on a CPU (fid_speed.py)
    return model.to(device, memory_format=torch.channels_last)
