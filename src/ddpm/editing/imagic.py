"""Imagic (Kawar et al. 2023, "Imagic: Text-Based Real Image Editing with Diffusion Models"), Sec. 3:

    (A) e_opt = argmin_e  L(x0, e; theta)            from e = e_tgt, theta frozen        (Eq. 2)
    (B) theta' = argmin_theta  L(x0, e_opt; theta)   e_opt fixed (LoRA or all weights)    (Eq. 3)
    (C) x0' = sample(theta', e = eta e_tgt + (1 - eta) e_opt)                               (Eq. 4)

L is the model's own L_simple (DDPM Eq. 14) on the one image x0 (pixels, or SD's latents), each step
averaged over `batch` draws of (t, eps). e `[1, L, D]` is the whole sequence of text states the UNet's
cross-attention reads (SD 1.x: `[1, 77, 768]`). Stage C draws every eta of a strip from the same x_T: the
seed's noise (the paper), or with `init_from_inversion` the DDIM inversion of x0 under (theta', e_opt).

Each stage reports its loss on one fixed set of draws before and after (`loss_before`/`loss_after`), its
time, the number of trained values, their Adam state and the process's peak memory. `ImagicEdit.save`
writes e_tgt, e_opt, e_null, the adapter (or the fine-tuned UNet), the settings and the source image to a
folder; `load_edit` reads it back so that eta can be swept without optimising again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..nn.lora import add_lora, load_lora_state_dict, lora_parameters, lora_state_dict, remove_lora
from ..pipelines import SamplingOptions
from ..pipelines.sd_images import ImageInput
from .model import EditModel, Sampling, edit_model

__all__ = ["ImagicSettings", "ImagicEdit", "imagic", "load_edit", "check_eta", "check_target", "ETA_RANGE"]

ETA_RANGE = (0.0, 1.5)  # 0: the reconstruction; 1: the target text's embedding; beyond 1: extrapolated
FINETUNE_MODES = ("lora", "full")
STATE_FILE, TENSORS_FILE, SOURCE_FILE = "edit.json", "edit.safetensors", "source.png"
_PROBE_DRAWS = 32  # (t, eps) draws of the fixed loss each stage is measured on


@dataclass(frozen=True)
class ImagicSettings:
    """Optimisation settings; None = the default for the model kind (`for_kind`)."""

    embedding_steps: int | None = None
    embedding_lr: float | None = None
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    finetune: str | None = None  # "lora" (SD default) or "full" (pixel default)
    lora_rank: int = 4
    batch: int | None = None  # (t, eps) draws per optimisation step
    seed: int = 0  # of the draws
    init_from_inversion: bool = False

    def for_kind(self, kind: str) -> ImagicSettings:
        """Unset fields filled: SD 1.x the paper's published settings (embedding 500 steps at 1e-3, LoRA
        1,000 steps at 1e-4); pixel models shorter runs (their UNets are ~1/500 the size)."""
        sd = kind == "sd"
        d = dict(
            embedding_steps=500 if sd else 100,
            embedding_lr=1e-3 if sd else 1e-2,
            finetune_steps=1000 if sd else 100,
            finetune="lora" if sd else "full",
            batch=1 if sd else 8,
        )
        values = {k: (d[k] if getattr(self, k) is None else getattr(self, k)) for k in d}
        mode = values["finetune"]
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {list(FINETUNE_MODES)}, got {mode!r}")
        lr = self.finetune_lr
        if lr is None:
            lr = (1e-4 if mode == "lora" else 1e-6) if sd else (1e-3 if mode == "lora" else 2e-4)
        out = dataclasses.replace(self, finetune_lr=lr, **values)
        for key in ("embedding_steps", "finetune_steps"):
            v = getattr(out, key)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise ValueError(f"{key} must be a whole number >= 0, got {v!r}")
        for key in ("embedding_lr", "finetune_lr"):
            if not float(getattr(out, key)) > 0:
                raise ValueError(f"{key} must be a positive number, got {getattr(out, key)!r}")
        if isinstance(out.batch, bool) or int(out.batch) != out.batch or out.batch < 1:
            raise ValueError(f"batch must be a whole number >= 1, got {out.batch!r}")
        if out.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {out.lora_rank}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_eta(eta: float) -> float:
    """eta as a float in ETA_RANGE, or a ValueError naming the range."""
    lo, hi = ETA_RANGE
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not lo <= float(eta) <= hi:
        raise ValueError(f"eta must lie in [{lo:g}, {hi:g}] (0 reconstructs the image, 1 is the target text, "
                         f"about 0.6-0.8 edits it), got {eta!r}")  # fmt: skip
    return float(eta)


def check_target(text: Any) -> str:
    """The target text, or a ValueError when it is empty."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError('the target text is empty: say what the edited image should show, e.g. "a blue '
                         'circle to the left of a red square"')  # fmt: skip
    return text


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MB: CUDA's allocator peak on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _bar(steps: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, unit="step")


@torch.no_grad()
def _probe(model: EditModel, x0: Tensor, e: Tensor, seed: int) -> float:
    """L at `e` on one fixed set of _PROBE_DRAWS draws (the same before and after a stage)."""
    return float(model.loss(x0, e, torch.Generator().manual_seed(10_000 + seed), _PROBE_DRAWS))


def _optimise(
    model: EditModel,
    x0: Tensor,
    context: Tensor,
    params: list[Tensor],
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    desc: str,
    progress: bool,
) -> list[float]:
    """`steps` Adam steps on L(x0, context) over `params`; the loss of each step."""
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bar, losses = _bar(steps, desc, progress), []
    for _ in range(steps):
        with torch.enable_grad():
            loss = model.loss(x0, context, gen, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if not torch.isfinite(loss.detach()):
            raise ValueError(f"the {desc} loss became {loss.item()}; lower its learning rate")
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    return losses


@dataclass
class ImagicEdit:
    """The optimised state of one edit: the tuned model, e_tgt, e_opt, e_null, the source x0, settings."""

    model: EditModel  # the fine-tuned model (its own UNet for full fine-tuning; adapters for LoRA)
    target: str
    e_tgt: Tensor
    e_opt: Tensor
    e_null: Tensor
    x0: Tensor
    source: Tensor  # pixels [1, 3, H, W] the edit started from
    settings: ImagicSettings
    sampling: Sampling
    report: dict[str, Any] = field(default_factory=dict)
    _base: EditModel | None = None  # the untouched model (full fine-tuning) or None (adapters in place)

    def context(self, eta: float) -> Tensor:
        """eta e_tgt + (1 - eta) e_opt `[1, L, D]` (Eq. 4)."""
        eta = check_eta(eta)
        return eta * self.e_tgt + (1 - eta) * self.e_opt

    @torch.no_grad()
    def render(
        self, etas: Sequence[float], *, init_from_inversion: bool | None = None, progress: bool = False
    ) -> Tensor:
        """Images `[len(etas), 3, H, W]` in [-1, 1], all from one x_T (stage C)."""
        etas = [check_eta(e) for e in etas]
        if not etas:
            raise ValueError("give at least one eta")
        t0 = time.perf_counter()
        contexts = torch.cat([self.context(e) for e in etas])
        invert = self.settings.init_from_inversion if init_from_inversion is None else init_from_inversion
        s = self.sampling
        if invert:
            s = self.model.ddim(s)
            start = self.model.invert(self.x0, self.e_opt, s, progress=progress).x_T
            start = start.expand(len(etas), *start.shape[1:])
        else:
            start = self.model.noise(tuple(self.x0.shape), s.seed, len(etas))
        x = self.model.sample(contexts, self.e_null, s, start=start, progress=progress)
        images = self.model.to_pixels(x)
        self.report["sampling"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "images": len(etas),
            "peak_memory_mb": round(_peak_memory_mb(self.model.device), 1),
        }
        return images

    def close(self) -> None:
        """Give the base model back untouched (remove LoRA adapters; drop a fine-tuned copy)."""
        if self.settings.finetune == "lora":
            remove_lora(self.model.unet)
        self.model = self._base or self.model

    # ------------------------------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write the edit state into `folder`: edit.json, edit.safetensors, source.png."""
        from ..io.atomic import atomic_write_bytes
        from ..io.images import save_png
        from ..io.sd import write_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"e_tgt": self.e_tgt, "e_opt": self.e_opt, "e_null": self.e_null, "x0": self.x0}
        if self.settings.finetune == "lora":
            tensors.update({f"lora.{k}": v for k, v in lora_state_dict(self.model.unet).items()})
        else:
            tensors.update({f"unet.{k}": v for k, v in self.model.unet.state_dict().items()})
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        write_safetensors(folder / TENSORS_FILE, tensors, {"format": "ddpm-edit"})
        save_png(folder / SOURCE_FILE, self.source[0])
        state = {"method": "imagic", "target": self.target, "model": self.model.source,
                 "model_hash": self.model.model_hash, "kind": self.model.kind,
                 "settings": self.settings.to_dict(), "sampling": self.sampling.to_dict(),
                 "report": self.report}  # fmt: skip
        atomic_write_bytes(folder / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())
        return folder


def imagic(
    model: Any,
    image: ImageInput,
    target: str,
    *,
    settings: ImagicSettings | None = None,
    options: SamplingOptions | None = None,
    progress: bool = False,
) -> ImagicEdit:
    """Stages A and B of Imagic for `image` and the `target` text on `model` (a path, a pipeline or an
    `EditModel`); stage C is `ImagicEdit.render(etas)`. The image is resized to the model's size with a
    warning; `options` sets stage C's sampler, steps, guidance and seed (default: the model's)."""
    model = edit_model(model)
    target = check_target(target)
    st = (settings or ImagicSettings()).for_kind(model.kind)
    sampling = model.sampling(options)
    source = model.pixels(image)
    x0 = model.to_x0(source)
    e_tgt, e_null = model.embed(target), model.embed("")
    report: dict[str, Any] = {}
    dev = model.device

    # (A) the embedding that reconstructs the image, the model frozen
    t0 = time.perf_counter()
    before = _probe(model, x0, e_tgt, st.seed)
    e = e_tgt.clone().to(dev).requires_grad_(True)
    losses = _optimise(model, x0, e, [e], steps=int(st.embedding_steps), lr=float(st.embedding_lr),
                       batch=int(st.batch), seed=st.seed, desc="A: embedding", progress=progress)  # fmt: skip
    e_opt = e.detach()
    report["embedding"] = _stage(model, losses, before, _probe(model, x0, e_opt, st.seed), t0, e.numel())

    # (B) the model fine-tuned to the image at e_opt
    t0 = time.perf_counter()
    base = model
    before = _probe(model, x0, e_opt, st.seed)
    if st.finetune == "lora":
        add_lora(model.unet, rank=st.lora_rank)
        params = lora_parameters(model.unet)
    else:
        model = model.with_unet(copy.deepcopy(model.unet).requires_grad_(True))
        params = [p for p in model.unet.parameters()]
    losses = _optimise(
        model,
        x0,
        e_opt,
        params,
        steps=int(st.finetune_steps),
        lr=float(st.finetune_lr),
        batch=int(st.batch),
        seed=st.seed + 1,
        desc="B: fine-tuning",
        progress=progress,
    )
    model.unet.requires_grad_(False)
    count = sum(p.numel() for p in params)
    report["finetune"] = _stage(model, losses, before, _probe(model, x0, e_opt, st.seed), t0, count)
    report["finetune"]["mode"] = st.finetune
    return ImagicEdit(model, target, e_tgt, e_opt, e_null, x0, source, st, sampling, report,
                      base if st.finetune == "full" else None)  # fmt: skip


def _stage(
    model: EditModel, losses: list[float], before: float, after: float, t0: float, trained: int
) -> dict:
    seconds = time.perf_counter() - t0
    return {"steps": len(losses), "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / max(1, len(losses)), 4), "loss_before": before,
            "loss_after": after, "trained_values": int(trained),
            "adam_state_mb": round(2 * 4 * trained / 2**20, 2),
            "peak_memory_mb": round(_peak_memory_mb(model.device), 1)}  # fmt: skip


def load_edit(folder: str | Path, model: Any = None) -> ImagicEdit:
    """An `ImagicEdit` from a folder `ImagicEdit.save` wrote; `model` (path, pipeline or `EditModel`)
    defaults to the path the state names, and must be the model the edit was optimised on."""
    from ..io.checkpoint import load_state_dict

    folder = Path(folder)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no {STATE_FILE}; pass the --out folder of an earlier "
                                "`ddpm edit --method imagic`")  # fmt: skip
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if model is None:
        if not state.get("model") or not Path(state["model"]).exists():
            raise FileNotFoundError(f"the edit was made with {state.get('model')!r}, which is not there now; "
                                    "pass the model with --model")  # fmt: skip
        model = state["model"]
    model = edit_model(model)
    if state.get("model_hash") and model.model_hash and state["model_hash"] != model.model_hash:
        raise ValueError(
            f"the edit in {str(folder)!r} was optimised on another model (hash "
            f"{state['model_hash']}, this one {model.model_hash}); pass that model with --model"
        )
    tensors = load_state_dict(folder / TENSORS_FILE, nonfinite="error")
    st = ImagicSettings(**state["settings"])
    sampling = Sampling(**state["sampling"])
    base = None
    dev, dtype = model.device, model.dtype
    if st.finetune == "lora":
        lora = {k[len("lora.") :]: v.to(dev, dtype) for k, v in tensors.items() if k.startswith("lora.")}
        load_lora_state_dict(model.unet, lora)
    else:
        base = model
        unet = copy.deepcopy(model.unet)
        weights = {k[len("unet.") :]: v for k, v in tensors.items() if k.startswith("unet.")}
        unet.load_state_dict(weights)
        model = model.with_unet(unet.requires_grad_(False))
    from ..pipelines.sd_images import image_size, image_tensor

    source = image_tensor(folder / SOURCE_FILE, *image_size(folder / SOURCE_FILE))
    e = {k: tensors[k].to(dev) for k in ("e_tgt", "e_opt", "e_null")}
    x0 = tensors["x0"].to(dev, dtype)
    report = dict(state.get("report") or {})
    return ImagicEdit(model, state["target"], e["e_tgt"], e["e_opt"], e["e_null"], x0, source, st, sampling,
                      report, base)  # fmt: skip
