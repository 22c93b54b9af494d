"""The one training loop: `train(config)` / `train(config, resume="runs/NAME")`, whatever the task.

One optimizer step:
  1. the next `batch_size` indices of the deterministic data stream (`data.py`);
  2. the task's random draws for the whole global batch, from the training generator (so every random
     decision of a step is checkpointed);
  3. per micro-batch of this rank: the task's loss under autocast, backward (DDP all-reduces on the last
     micro-batch);
  4. grad-norm (and clipping); ONE host sync per step checks loss and grad-norm for non-finite values
     (all ranks agree through an all-reduce) and for a stop request (SIGTERM / Ctrl-C);
  5. AdamW step with the warmup/cosine learning rate and the EMA update; or, if non-finite, a skipped step.
Logging, previews and checkpoints happen on their cadences, on rank 0 only.

What is trained is the task's (`tasks/`, picked by run.task through `make_task`): model and data, the
step's draws, the loss, the model-file layout and metadata, the preview, extra metrics columns and resume
checks. The loop owns the rest: optimizer, EMA, checkpoints and exact resume, DDP, stop signals,
metrics.csv.
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

from ..config import Config, config_to_dict, dump_config, load_config
from ..io.run_folder import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import BatchSource, IndexStream, chunk
from .distributed import setup_distributed
from .ema import EMA
from .metrics import FIELDS, MetricsLog
from .signals import StopOnSignals, TrainingInterrupted
from .tasks import make_task

__all__ = ["train", "Trainer", "TrainingDiverged", "lr_at"]


class TrainingDiverged(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


def lr_at(step: int, *, lr: float, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant or cosine to zero."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule != "cosine":
        return lr * warm
    return lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _flatten(config: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in config_to_dict(config).items() for k, v in section.items()}


class _Window:
    """Sums over the good steps since the last metrics.csv row (kept on the device: no host sync)."""

    def __init__(self, device: torch.device, step: int):
        self.loss = torch.zeros((), device=device)
        self.norm = torch.zeros((), device=device)
        self.reset(step, time.perf_counter())

    def reset(self, step: int, now: float) -> None:
        self.loss.zero_()
        self.norm.zero_()
        self.good, self.t, self.step = 0, now, step

    def mean(self, total: Tensor) -> float:
        return (total / self.good).item() if self.good else float("nan")


class Trainer:
    """A run, built in `__init__` (so tests can inspect it) and trained by `run()`; `task` is what it trains
    (`make_task(config)`), everything else is the same for every task."""

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
        self.config = copy.deepcopy(config)  # the task fills in fields: keep the caller's intact
        self.progress = progress
        self.stop_after = stop_after
        self.env, self.device = setup_distributed(self.config.train.device)
        self._threads_before = torch.get_num_threads()
        try:
            self._build(saved, resuming=resume is not None)
        except BaseException:
            self.env.close()
            torch.set_num_threads(self._threads_before)
            raise

    # ----------------------------------------------------------------------------------------- setup
    def _build(self, saved: Config | None, *, resuming: bool) -> None:
        tc, env, device = self.config.train, self.env, self.device
        self._check_setup(resuming=resuming)
        self.task = make_task(self.config)
        self.task.prepare()
        self.changed_on_resume = self._check_resume_config(saved) if saved is not None else []
        self.dataset, module = self.task.build()
        self.module = module.to(device)
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
        if resuming:
            self._load(load_checkpoint(self.run_dir, device=device))
        self._wrap()
        self.stream = IndexStream(len(self.dataset), seed=tc.seed)
        self.source = BatchSource(
            self.dataset, stream=self.stream, position=self.position, global_batch=tc.batch_size,
            rank=env.rank, world_size=env.world_size, grad_accum=tc.grad_accum, device=device,
            num_workers=self.config.data.num_workers, seed=tc.seed,
        )

    def _check_setup(self, *, resuming: bool) -> None:
        tc, env = self.config.train, self.env
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        if tc.batch_size % (env.world_size * tc.grad_accum):
            raise ValueError(
                f"train.batch_size ({tc.batch_size}) must split evenly over {env.world_size} process(es) x "
                f"{tc.grad_accum} accumulation step(s)"
            )
        if not resuming and env.is_main and (self.run_dir / "latest").exists():
            raise ValueError(
                f"{self.run_dir} already holds a run; continue it with `ddpm train --resume {self.run_dir}` "
                "or choose another run.name"
            )

    def _wrap(self) -> None:
        """`self.model` (DDP under torchrun), `self.forward` (compiled if asked) and `self.autocast`."""
        tc, device = self.config.train, self.device
        self.model: torch.nn.Module = self.module
        if self.env.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.forward = torch.compile(self.model) if tc.compile else self.model
        mp = tc.mixed_precision
        use_bf16 = mp == "bf16" or (mp == "auto" and device.type == "cuda")
        bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        self.autocast = bf16 if use_bf16 else nullcontext

    def _check_resume_config(self, saved: Config) -> list[str]:
        """The settings changed since the run started; an error if the task or a fixed one changed."""
        old, new = _flatten(saved), _flatten(self.config)
        if old["run.task"] != new["run.task"]:
            raise ValueError(f"cannot resume {self.run_dir}, a run of task {old['run.task']!r}, as task "
                             f"{new['run.task']!r}; start a new run for that")
        diff = [k for k in new if k in old and old[k] != new[k] and not k.startswith("run.")]
        fixed = [k for k in diff if k.startswith(self.task.fixed_on_resume)]
        if fixed:
            detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in fixed)
            raise ValueError(
                f"cannot resume {self.run_dir} with a different model, data or diffusion setting ({detail}); "
                "start a new run for that"
            )
        return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff]

    def _load(self, ck: Any) -> None:
        self.task.check_checkpoint(ck.meta, run_dir=self.run_dir)
        self.module.load_state_dict(self.task.from_file(ck.model))
        self.ema.module.load_state_dict(self.task.from_file(ck.ema))
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
    def _step(self) -> tuple[Tensor, Tensor]:
        """Forward/backward over this rank's micro-batches of one optimizer step: (mean loss, grad norm)."""
        tc, G = self.config.train, self.config.train.batch_size
        idx = self.stream.take(self.position, G)
        self.position += G
        draws = self.task.draws(self.generator, parts=self.source.parts)
        loss_sum = torch.zeros((), device=self.device)
        batches = self.source.batches(idx, self.step)
        for micro, batch in enumerate(batches):
            part = self.source.first + micro
            last = micro == len(batches) - 1
            with self.model.no_sync() if self.env.active and not last else nullcontext():
                loss = self.task.loss(self.forward, batch, draws, rows=chunk(G, part, self.source.parts),
                                      part=part, autocast=self.autocast)
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

    def _apply(self, bad: bool, loss: Tensor, norm: Tensor) -> None:
        """The optimizer and EMA update of a good step; a skipped (and counted) bad one."""
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite >= self.config.train.max_nonfinite:
                raise self._diverged(loss, norm)
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.module, self.step)
        self.consecutive_nonfinite = 0
        self._window.loss += loss.detach()
        self._window.norm += norm.detach()
        self._window.good += 1

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
            self.run_dir, self.step, model=self.task.to_file(self.module.state_dict()),
            ema=self.task.to_file(self.ema.module.state_dict()), state=state,
            meta=self.task.meta(step=self.step).to_dict(), keep_last=self.config.train.keep_last,
        )
        return self.last_saved

    def preview(self) -> Path | None:
        """Write samples/step-N.png from the EMA model (rank 0)."""
        if not self.env.is_main:
            return None
        return self.task.preview(self.ema.module, self.run_dir / "samples" / f"step-{self.step}.png",
                                 step=self.step, device=self.device, autocast=self.autocast)

    def _log(self, lr: float, bar: Any) -> None:
        """One metrics.csv row: the means over the good steps since the last row, and the task's columns."""
        w, env = self._window, self.env
        if env.active:
            import torch.distributed as dist

            dist.all_reduce(w.loss)
            w.loss /= env.world_size
        now = time.perf_counter()
        loss, norm = w.mean(w.loss), w.mean(w.norm)
        if env.is_main:
            self.metrics.write(
                step=self.step, loss=loss, lr=lr, grad_norm=norm, nonfinite_skips=self.nonfinite_total,
                it_s=(self.step - w.step) / max(now - w.t, 1e-9), elapsed=self._elapsed(),
                **self.task.metrics(self.ema.module),
            )
            bar.set_postfix(loss=f"{loss:.4f}", skipped=self.nonfinite_total, refresh=False)
        w.reset(self.step, now)

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    # --------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        """Train to `train.steps` (or `stop_after`), checkpointing on the way; a stop signal saves a
        checkpoint and raises `TrainingInterrupted`."""
        try:
            with StopOnSignals(self.request_stop, lambda: self._stop_requested):
                return self._run()
        finally:
            self.env.close()
            torch.set_num_threads(self._threads_before)

    def _open(self) -> bool:
        """Write config.toml and open metrics.csv (rank 0); whether the run continues a checkpoint."""
        resumed = (self.run_dir / "latest").exists()
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dump_config(self.config), encoding="utf-8")
            path, fields = self.run_dir / "metrics.csv", (*FIELDS, *self.task.metric_fields)
            self.metrics = MetricsLog(path, resume_step=self.step if resumed else None, fields=fields)
            for change in self.changed_on_resume:
                self._say(f"resuming with a changed setting: {change}")
        return resumed

    def _run(self) -> Path:
        from tqdm import tqdm

        tc = self.config.train
        saved_step = self.step if self._open() else -1
        self.last_saved: Path | None = None
        stop_at = min(tc.steps, self.stop_after) if self.stop_after is not None else tc.steps
        bar = tqdm(total=tc.steps, initial=self.step, disable=not (self.progress and self.env.is_main),
                   dynamic_ncols=True, desc=self.config.run.name)
        self._t0 = time.perf_counter()
        self._window = _Window(self.device, self.step)
        stopped_by = None
        try:
            while self.step < stop_at:
                lr = lr_at(self.step, lr=tc.lr, warmup_steps=tc.warmup_steps, schedule=tc.lr_schedule,
                           total_steps=tc.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, norm = self._step()
                bad, stop = self._flags(loss, norm)
                self._apply(bad, loss, norm)
                self.step += 1
                bar.update(1)
                last_step = self.step >= stop_at or stop
                if tc.log_every and (self.step % tc.log_every == 0 or last_step):
                    self._log(lr, bar)
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
        self.env.barrier()
        if stopped_by is not None:
            raise TrainingInterrupted(stopped_by, step=self.step, run_dir=self.run_dir)
        return self.run_dir

    # ------------------------------------------------------------------------------------ signals
    _stop_requested = False
    _stop_signal: str | None = None

    def request_stop(self, reason: str = "a stop request") -> None:
        """Finish the current step, save a checkpoint and raise `TrainingInterrupted` (what SIGTERM / Ctrl-C
        do)."""
        self._stop_requested = True
        self._stop_signal = reason


def train(
    config: Config | None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train what `config` describes (run.task picks the task: a diffusion model, a KL autoencoder, …);
    returns the run folder `run.dir/run.name`.

    `resume`: a run folder to continue exactly where its latest checkpoint left off (`config` None uses the
    run's own config.toml; a given config may change cadences, steps and optimisation settings, not the
    model, data or diffusion process). `stop_after`: stop (with a checkpoint) once this many steps are done.
    SIGTERM or Ctrl-C save a checkpoint, then raise `TrainingInterrupted` (its `exit_code` is the shell's).
    """
    return Trainer(config, resume=resume, progress=progress, stop_after=stop_after).run()
