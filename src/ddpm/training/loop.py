"""The training loop: `train(config)` / `train(config, resume="runs/NAME")`.

One optimizer step (DDPM Alg. 1, with the usual engineering):
  1. the next `batch_size` indices of the deterministic data stream (`data.py`);
  2. from the training generator, for the whole global batch: t ~ U{0..T-1}, eps ~ N(0, I), the
     classifier-free-guidance drop mask, the flip mask (so every random decision is checkpointed);
  3. per micro-batch of this rank: x_t = q_sample(x0, t, eps), the model output under autocast,
     `objectives.training_loss`, backward (DDP all-reduces on the last micro-batch);
  4. grad-norm (and clipping); ONE host sync per step checks loss and grad-norm for non-finite values
     (all ranks agree through an all-reduce) and for a stop request (SIGTERM / Ctrl-C);
  5. AdamW step with the warmup/cosine learning rate, EMA update; or, if non-finite, a skipped step.
Logging, the preview grid and checkpoints happen on their cadences, on rank 0 only.

The task is pluggable: `Trainer` trains a diffusion model; what differs for another task (the model and
data built in `_build_task`, the step's random draws, the loss of a micro-batch, the file layout and
metadata of the weights, the preview, extra metrics columns) lives in overridable methods, and
`Trainer(config)` hands a config with run.task = "autoencoder" to `ddpm.training.autoencoder`'s subclass.
Everything else (checkpoints, exact resume, EMA, stop signals, DDP, metrics.csv) is shared.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..conditioning import Conditioner, make_conditioner
from ..config import Config, config_to_dict, dump_config, load_config
from ..io.run_folder import latest_checkpoint, load_checkpoint, save_checkpoint
from ..models.unet import UNet, UNetConfig
from ..objectives import sample_timesteps, training_loss
from ..process import q_sample
from ..schedules import from_config
from .data import BatchSource, IndexStream, chunk
from .distributed import setup_distributed
from .ema import EMA
from .export import from_file_keys, model_meta, to_file_keys
from .metrics import FIELDS, MetricsLog, write_preview
from .signals import StopOnSignals

__all__ = ["train", "Trainer", "TrainingDiverged", "DiffusionModule", "resolve_unet_config", "lr_at"]

# Keys whose change on resume would make the checkpoint meaningless (another model, data or process).
_FIXED_ON_RESUME = ("model.", "diffusion.", "data.dataset", "data.image_size", "data.channels",
                    "data.condition", "train.seed", "text.")


class TrainingDiverged(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class DiffusionModule(torch.nn.Module):
    """The trained network: `unet(x_t, t, **conditioner(batch, drop))`; one module for DDP and the EMA."""

    def __init__(self, unet: UNet, conditioner: Conditioner):
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(self, x_t: Tensor, t: Tensor, batch: dict[str, Any], drop: Tensor | None) -> Tensor:
        return self.unet(x_t, t, **self.conditioner(batch, drop))


def resolve_unet_config(config: Config, dataset: Any, conditioner: Conditioner) -> UNetConfig:
    """`config.model` with the fields the data and diffusion settings imply filled in (channels, classes,
    learned variance, conditioner fields); a value set to something else is an error naming both."""
    implied: dict[str, tuple[Any, str]] = {
        "in_channels": (dataset.channels, f"the dataset's {dataset.channels} channel(s)"),
        "out_channels": (dataset.channels, f"the dataset's {dataset.channels} channel(s)"),
        "learned_variance": (config.diffusion.learned_variance, "diffusion.learned_variance"),
        "num_classes": (None, f"data.condition = {config.data.condition!r}"),
        "context_dim": (None, f"data.condition = {config.data.condition!r}"),
    }
    for k, v in conditioner.unet_fields().items():
        implied[k] = (v, f"data.condition = {config.data.condition!r}")
    defaults = UNetConfig()
    given = config.model.to_dict()
    for key, (value, reason) in implied.items():
        if given[key] != getattr(defaults, key) and given[key] != value:
            raise ValueError(
                f"model.{key} = {given[key]!r} conflicts with {value!r} implied by {reason}; "
                f"remove model.{key} from the config (training fills it in)"
            )
    unet_config = UNetConfig.from_dict({**given, **{k: v for k, (v, _) in implied.items()}})
    f = unet_config.downsampling_factor
    if dataset.image_size % f:
        raise ValueError(
            f"images of {dataset.image_size}x{dataset.image_size} do not fit a UNet with "
            f"{len(unet_config.channel_mult)} levels and patch size {unet_config.patch_size} (sizes must be "
            f"multiples of {f}); change data.image_size, model.channel_mult or model.patch_size"
        )
    return unet_config


def lr_at(step: int, *, lr: float, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant or cosine to zero."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule != "cosine":
        return lr * warm
    return lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _flatten(config: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in config_to_dict(config).items() for k, v in section.items()}


def _task_of(config: Config | None, resume: str | Path | None) -> str:
    """run.task of the given config, else of the run folder's own config.toml ("diffusion" if unreadable:
    `Trainer.__init__` then reports the problem)."""
    if config is not None:
        return config.run.task
    try:
        return load_config(Path(resume) / "config.toml").run.task  # type: ignore[arg-type]
    except (OSError, ValueError):
        return "diffusion"


class Trainer:
    """Everything a run needs, built in `__init__` (so tests can inspect it), trained by `run()`.

    `Trainer(config)` with run.task = "autoencoder" builds a `ddpm.training.autoencoder.AutoencoderTrainer`.
    """

    # Config keys whose change on resume would make the checkpoint meaningless.
    fixed_on_resume: tuple[str, ...] = _FIXED_ON_RESUME
    # Columns of metrics.csv.
    metric_fields: tuple[str, ...] = FIELDS

    def __new__(
        cls, config: Config | None = None, *, resume: str | Path | None = None, **kwargs: Any
    ) -> Trainer:
        if cls is Trainer and _task_of(config, resume) == "autoencoder":
            from .autoencoder import AutoencoderTrainer

            cls = AutoencoderTrainer
        return super().__new__(cls)

    def __init__(
        self,
        config: Config | None = None,
        *,
        resume: str | Path | None = None,
        progress: bool = True,
        stop_after: int | None = None,
    ):
        if config is None and resume is None:
            raise ValueError("train() needs a config, or resume= a run folder to continue")
        saved = None
        if resume is not None:
            self.run_dir = Path(resume)
            if not (self.run_dir / "config.toml").is_file():
                raise FileNotFoundError(f"{str(self.run_dir)!r} is not a run folder (no config.toml)")
            saved = load_config(self.run_dir / "config.toml")
            config = config or saved
        else:
            self.run_dir = Path(config.run.dir) / config.run.name
        self.config = cfg = copy.deepcopy(config)  # [model] gets filled in: keep the caller's intact
        self.progress = progress
        self.stop_after = stop_after
        self.env, self.device = setup_distributed(cfg.train.device)
        self._threads_before = torch.get_num_threads()
        try:
            self._build(saved, resume)
        except BaseException:
            self.env.close()
            torch.set_num_threads(self._threads_before)
            raise

    # ----------------------------------------------------------------------------------------- setup
    def _build(self, saved: Config | None, resume: Any) -> None:

        cfg, env, device = self.config, self.env, self.device
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        parts = env.world_size * tc.grad_accum
        if tc.batch_size % parts:
            raise ValueError(
                f"train.batch_size ({tc.batch_size}) must split evenly over {env.world_size} process(es) x "
                f"{tc.grad_accum} accumulation step(s)"
            )
        if resume is None and env.is_main and (self.run_dir / "latest").exists():
            raise ValueError(
                f"{self.run_dir} already holds a run; continue it with `ddpm train --resume {self.run_dir}` "
                "or choose another run.name"
            )
        dc = cfg.data
        self.changed_on_resume: list[str] = []
        self._build_task(saved)
        self.module = self.module.to(device)
        self.ema = EMA(self.module, decay=tc.ema_decay, warmup=tc.ema_warmup)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        impl = {"fused": True} if device.type == "cuda" else {"foreach": True}  # torch's default loops on CPU
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, betas=tuple(tc.adam_betas),
                                           weight_decay=tc.weight_decay, **impl)
        self.generator = torch.Generator().manual_seed(tc.seed + 0x5EED)
        # Dropout randomness: its own stream per rank, seeded after the (shared) initialisation.
        torch.manual_seed(tc.seed * 1009 + 17 * env.rank + 1)

        self.step = self.position = self.nonfinite_total = self.consecutive_nonfinite = 0
        self.elapsed_before = 0.0
        if resume is not None:
            self._load(load_checkpoint(self.run_dir, device=device))

        self.model: torch.nn.Module = self.module
        if env.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.forward = torch.compile(self.model) if tc.compile else self.model
        mp = tc.mixed_precision
        use_bf16 = mp == "bf16" or (mp == "auto" and device.type == "cuda")
        bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        self.autocast = bf16 if use_bf16 else nullcontext

        self.stream = IndexStream(len(self.dataset), seed=tc.seed)
        self.source = BatchSource(
            self.dataset, stream=self.stream, position=self.position, global_batch=tc.batch_size,
            rank=env.rank, world_size=env.world_size, grad_accum=tc.grad_accum, device=device,
            num_workers=dc.num_workers, seed=tc.seed,
        )

    def _build_task(self, saved: Config | None) -> None:
        """The task's data, model and process: `self.dataset`, `self.module` (seeded by train.seed), and
        the resume check against `saved` once the config is complete."""
        from ..data import load_dataset

        cfg, tc, dc = self.config, self.config.train, self.config.data
        self.dataset = load_dataset(dc.dataset, split="train", image_size=dc.image_size, channels=dc.channels,
                                    flip=False, seed=tc.seed, **dc.options)
        self.conditioner = make_conditioner(cfg, self.dataset)
        self.unet_config = resolve_unet_config(cfg, self.dataset, self.conditioner)
        cfg.model = self.unet_config
        if saved is not None:
            self._check_resume_config(saved)
        self.schedule = from_config(cfg.diffusion.schedule_config())
        self.shape = (self.dataset.channels, self.dataset.image_size, self.dataset.image_size)
        self.drop_prob = dc.cond_drop_prob if self.conditioner.kind != "none" else 0.0

        torch.manual_seed(tc.seed)
        self.module = DiffusionModule(UNet(self.unet_config), self.conditioner)

    def _check_resume_config(self, saved: Config) -> None:
        old, new = _flatten(saved), _flatten(self.config)
        if old["run.task"] != new["run.task"]:
            raise ValueError(f"cannot resume {self.run_dir}, a run of task {old['run.task']!r}, as task "
                             f"{new['run.task']!r}; start a new run for that")
        diff = [k for k in new if k in old and old[k] != new[k] and not k.startswith("run.")]
        fixed = [k for k in diff if k.startswith(self.fixed_on_resume)]
        if fixed:
            detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in fixed)
            raise ValueError(
                f"cannot resume {self.run_dir} with a different model, data or diffusion setting ({detail}); "
                "start a new run for that"
            )
        self.changed_on_resume = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff]

    def _to_file(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training-module keys -> the model-file layout written into checkpoints."""
        return to_file_keys(state, self.conditioner)

    def _check_vocabulary(self, saved_meta: dict[str, Any]) -> None:
        """A text run's vocabulary comes from its captions: refuse to resume where they changed since."""
        def vocab(meta: dict[str, Any]) -> list[str] | None:
            tokenizer = ((meta.get("conditioning") or {}).get("text_encoder") or {}).get("tokenizer") or {}
            return tokenizer.get("vocab")

        conditioner = getattr(self, "conditioner", None)  # the autoencoder task has none
        if conditioner is None:
            return
        old, new = vocab(saved_meta), vocab({"conditioning": conditioner.meta()})
        if old is not None and new is not None and list(old) != list(new):
            gained, lost = sorted(set(new) - set(old)), sorted(set(old) - set(new))
            raise ValueError(
                f"cannot resume {self.run_dir}: its captions changed since the run started, so the text "
                f"vocabulary did too (new words: {', '.join(gained[:10]) or 'none'}; gone: "
                f"{', '.join(lost[:10]) or 'none'}); restore the captions, or start a new run"
            )

    def _from_file(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model-file layout of a checkpoint -> training-module keys."""
        return from_file_keys(tensors, self.conditioner)

    def _meta(self) -> dict[str, Any]:
        """The "ddpm" metadata of the checkpoint's model files."""
        return model_meta(self.config, self.unet_config, self.conditioner, self.dataset, step=self.step,
                          run=self.config.run.name)

    def _load(self, ck: Any) -> None:
        self._check_vocabulary(ck.meta)
        self.module.load_state_dict(self._from_file(ck.model))
        self.ema.module.load_state_dict(self._from_file(ck.ema))
        st = ck.state
        self.optimizer.load_state_dict(st["optimizer"])
        self.generator.set_state(st["generator"])
        rank = self.env.rank
        if len(st["rng_cpu"]) != self.env.world_size:
            self._say(f"note: the checkpoint was written by {len(st['rng_cpu'])} process(es), this run has "
                      f"{self.env.world_size}; dropout randomness will differ from an uninterrupted run")
        torch.set_rng_state(st["rng_cpu"][rank % len(st["rng_cpu"])])
        cuda_states = [s for s in st.get("rng_cuda", []) if s is not None]
        if self.device.type == "cuda" and cuda_states:
            torch.cuda.set_rng_state(cuda_states[rank % len(cuda_states)], self.device)
        self.step, self.position = int(st["step"]), int(st["position"])
        self.nonfinite_total = int(st["nonfinite_total"])
        self.consecutive_nonfinite = int(st["consecutive_nonfinite"])
        self.elapsed_before = float(st["elapsed"])

    def _say(self, message: str) -> None:
        if self.env.is_main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------------------------ one step
    def _draws(self) -> dict[str, Tensor | None]:
        g, n, d = self.generator, self.config.train.batch_size, self.config.diffusion
        return {
            "t": sample_timesteps(
                n, self.schedule.num_timesteps, generator=g, distribution=d.timestep_sampling,
                loc=d.timestep_loc, scale=d.timestep_scale,
            ),
            "eps": torch.randn(n, *self.shape, generator=g),
            "drop": torch.rand(n, generator=g) < self.drop_prob if self.drop_prob > 0 else None,
            "flip": torch.rand(n, generator=g) < 0.5 if self.config.data.flip else None,
        }

    def _micro_loss(self, batch: dict[str, Any], draws: dict[str, Any], sl: slice, part: int) -> Tensor:
        """The scalar loss of one micro-batch (slice `sl` of the global batch, chunk `part` of it)."""
        diff, dev = self.config.diffusion, self.device
        x0 = batch["image"]
        if draws["flip"] is not None:
            x0 = torch.where(draws["flip"][sl].to(dev).view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = draws["t"][sl]  # stays on the CPU: schedule coefficients are gathered there
        eps = draws["eps"][sl].to(dev, non_blocking=True)
        x_t = q_sample(self.schedule, x0, t, eps)
        drop = draws["drop"][sl] if draws["drop"] is not None else None
        with self.autocast():
            out = self.forward(x_t, t.to(dev, non_blocking=True), batch, drop)
        return training_loss(
            out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=self.schedule, prediction=diff.prediction,
            learned_variance=diff.learned_variance, min_snr_gamma=diff.min_snr_gamma,
            vlb_weight=diff.vlb_weight,
        ).mean()

    def _step(self) -> tuple[Tensor, Tensor]:
        """Forward/backward over this rank's micro-batches of one optimizer step: (mean loss, grad norm)."""
        tc, dev, G = self.config.train, self.device, self.config.train.batch_size
        idx = self.stream.take(self.position, G)
        self.position += G
        draws = self._draws()
        loss_sum = torch.zeros((), device=dev)
        batches = self.source.batches(idx, self.step)
        for micro, batch in enumerate(batches):
            part = self.source.first + micro
            sl = chunk(G, part, self.source.parts)
            last = micro == len(batches) - 1
            sync = self.model.no_sync() if self.env.active and not last else nullcontext()
            with sync:
                loss = self._micro_loss(batch, draws, sl, part)
                (loss / len(batches)).backward()
            loss_sum += loss.detach()
        if tc.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip, foreach=True)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        return loss_sum / len(batches), norm

    def _flags(self, loss: Tensor, norm: Tensor) -> tuple[bool, bool]:
        """(non-finite?, stop requested?) agreed by all ranks: the one host sync of a step."""
        bad = (~torch.isfinite(loss + norm)).float()
        if not self.env.active:
            return bool(bad.item()), self._stop_requested
        import torch.distributed as dist

        flags = torch.stack([bad, torch.tensor(float(self._stop_requested), device=bad.device)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        b, s = flags.tolist()
        return b > 0, s > 0

    # ----------------------------------------------------------------------------------- outputs
    def save(self) -> Path | None:
        """Checkpoint the current step (a collective under DDP; rank 0 writes). Returns the folder."""
        cuda = self.device.type == "cuda"
        rng_cpu = self.env.all_gather_object(torch.get_rng_state())
        rng_cuda = self.env.all_gather_object(torch.cuda.get_rng_state(self.device) if cuda else None)
        if not self.env.is_main:
            return None
        state = {
            "step": self.step, "position": self.position, "nonfinite_total": self.nonfinite_total,
            "consecutive_nonfinite": self.consecutive_nonfinite, "elapsed": self._elapsed(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "rng_cpu": rng_cpu, "rng_cuda": rng_cuda if cuda else [], "world_size": self.env.world_size,
        }
        self.last_saved = save_checkpoint(
            self.run_dir, self.step, model=self._to_file(self.module.state_dict()),
            ema=self._to_file(self.ema.module.state_dict()), state=state, meta=self._meta(),
            keep_last=self.config.train.keep_last,
        )
        return self.last_saved

    def preview(self) -> Path | None:
        """Write samples/step-N.png from the EMA model (rank 0)."""
        if not self.env.is_main:
            return None
        sc = self.config.sample
        return write_preview(
            self.run_dir / "samples" / f"step-{self.step}.png",
            self.ema.module.unet,
            self.ema.module.conditioner,
            schedule=self.schedule, shape=self.shape, num=sc.num, sampler=sc.sampler, steps=sc.steps,
            guidance_scale=sc.guidance_scale, prediction=self.config.diffusion.prediction,
            seed=self.config.train.seed, device=self.device, autocast=self.autocast(), step=self.step,
        )

    def _extra_metrics(self, *, final: bool) -> dict[str, float]:
        """Task-specific columns of a metrics.csv row (rank 0); `final`: the last row of this run."""
        return {}

    def _diverged(self, loss: Tensor, norm: Tensor) -> TrainingDiverged:
        try:
            last = str(latest_checkpoint(self.run_dir))
        except FileNotFoundError:
            last = "none written yet"
        return TrainingDiverged(
            f"training stopped at step {self.step + 1}: {self.consecutive_nonfinite} consecutive steps had a "
            f"non-finite loss or gradient (loss {float(loss):.4g}, grad norm {float(norm):.4g}); nothing was "
            f"saved after the last good checkpoint ({last}). Lower train.lr, keep train.grad_clip > 0 or set "
            "train.mixed_precision = 'no', then resume from that checkpoint"
        )

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    # --------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        """Train to `train.steps` (or `stop_after`, or a stop signal), checkpointing on the way."""
        try:
            with StopOnSignals(self.request_stop, lambda: self._stop_requested):
                return self._run()
        finally:
            self.env.close()
            torch.set_num_threads(self._threads_before)

    def _run(self) -> Path:
        from tqdm import tqdm

        cfg, tc, env = self.config, self.config.train, self.env
        resumed_at = self.step if (self.run_dir / "latest").exists() else None
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dump_config(cfg), encoding="utf-8")
            self.metrics = MetricsLog(self.run_dir / "metrics.csv", resume_step=resumed_at,
                                      fields=self.metric_fields)
            for change in self.changed_on_resume:
                self._say(f"resuming with a changed setting: {change}")
        self.last_saved: Path | None = None
        total = tc.steps
        stop_at = min(total, self.stop_after) if self.stop_after is not None else total
        bar = tqdm(total=total, initial=self.step, disable=not (self.progress and env.is_main),
                   dynamic_ncols=True, desc=cfg.run.name)
        self._t0 = time.perf_counter()
        log_loss = torch.zeros((), device=self.device)
        log_norm = torch.zeros((), device=self.device)
        log_good, log_t, log_step = 0, time.perf_counter(), self.step
        saved_step = self.step if resumed_at is not None else -1
        stopped_by = None
        try:
            while self.step < stop_at:
                lr = lr_at(self.step, lr=tc.lr, warmup_steps=tc.warmup_steps, schedule=tc.lr_schedule,
                           total_steps=total)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, norm = self._step()
                bad, stop = self._flags(loss, norm)
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_total += 1
                    self.consecutive_nonfinite += 1
                    if self.consecutive_nonfinite >= tc.max_nonfinite:
                        raise self._diverged(loss, norm)
                else:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.ema.update(self.module, self.step)
                    self.consecutive_nonfinite = 0
                    log_loss += loss.detach()
                    log_norm += norm.detach()
                    log_good += 1
                self.step += 1
                bar.update(1)

                last_step = self.step >= stop_at or stop
                if tc.log_every and (self.step % tc.log_every == 0 or last_step):
                    if env.active:
                        import torch.distributed as dist

                        dist.all_reduce(log_loss)
                        log_loss /= env.world_size
                    now = time.perf_counter()
                    mean_loss = (log_loss / max(log_good, 1)).item() if log_good else float("nan")
                    mean_norm = (log_norm / max(log_good, 1)).item() if log_good else float("nan")
                    it_s = (self.step - log_step) / max(now - log_t, 1e-9)
                    if env.is_main:
                        self.metrics.write(
                            step=self.step, loss=mean_loss, lr=lr, grad_norm=mean_norm,
                            nonfinite_skips=self.nonfinite_total, it_s=it_s, elapsed=self._elapsed(),
                            **self._extra_metrics(final=last_step),
                        )
                        bar.set_postfix(loss=f"{mean_loss:.4f}", skipped=self.nonfinite_total, refresh=False)
                    log_loss.zero_()
                    log_norm.zero_()
                    log_good, log_t, log_step = 0, now, self.step
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.preview()
                # No periodic checkpoint inside a streak of skipped steps: it could end in divergence.
                periodic = tc.checkpoint_every and self.step % tc.checkpoint_every == 0
                if (periodic and not self.consecutive_nonfinite) or last_step:
                    self.save()
                    saved_step = self.step
                if stop:
                    stopped_by = self._stop_signal or "a stop request"
                    break
            if saved_step != self.step:
                self.save()
        finally:
            bar.close()
        if stopped_by is not None:
            self._say(f"stopped by {stopped_by} at step {self.step}; checkpoint saved. "
                      f"Continue with `ddpm train --resume {self.run_dir}`")
        env.barrier()
        return self.run_dir

    # ------------------------------------------------------------------------------------ signals
    _stop_requested = False
    _stop_signal: str | None = None

    def request_stop(self, reason: str = "a stop request") -> None:
        """Finish the current step, save a checkpoint and return (what SIGTERM / Ctrl-C do)."""
        self._stop_requested = True
        self._stop_signal = reason


def train(
    config: Config | None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train the model `config` describes (run.task: a diffusion model, or a KL autoencoder); returns the
    run folder `run.dir/run.name`.

    `resume`: a run folder to continue exactly where its latest checkpoint left off (`config` None uses the
    run's own config.toml; a given config may change cadences, steps and optimisation settings, not the
    model, data or diffusion process). `stop_after`: stop (with a checkpoint) once this many steps are done.
    """
    return Trainer(config, resume=resume, progress=progress, stop_after=stop_after).run()
