"""The job queue: requests enter a FIFO with an id each; one worker thread owns the pipeline and runs them
one at a time, so overlapping requests never share the model. The sampler's per-step callback updates
the running job's progress and preview, and is where a cancellation (of that job only, by id) or an A1111
skip takes effect. A job that fails (bad input the pipeline found, out of memory, a bug) fails alone with
its message; the worker goes on with the next."""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .a1111 import GenerationRequest, Limits, RequestError, a1111_info
from .engine import Engine
from .outputs import Outputs

__all__ = ["Job", "JobQueue", "Cancelled"]

_OOM_TEXTS = ("out of memory", "can't allocate memory", "Out of memory")


class Cancelled(Exception):
    """Raised from the step callback: the job was cancelled (DELETE /api/jobs/{id}, /sdapi/v1/interrupt)."""


class Skipped(Exception):
    """Raised from the step callback: skip this batch of the job, go on with the next (/sdapi/v1/skip)."""


@dataclass(eq=False)
class Job:
    """One request's life: queued -> running -> done | failed | cancelled."""

    request: GenerationRequest
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    iteration: int = 0  # batch number within n_iter
    step: int = 0
    steps: int = 0
    images: list[dict[str, Any]] = field(default_factory=list)  # output records
    metadata: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    status: int = 200  # the HTTP status a blocking A1111 call answers with
    preview: Tensor | None = None  # x0_hat of the latest step, first image, [C, h, w] on the CPU
    cancel: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)

    @property
    def progress(self) -> float:
        """0 … 1 over all batches of the job; exactly 1 once done."""
        if self.state in ("done", "failed", "cancelled"):
            return 1.0 if self.state == "done" else self._fraction()
        return self._fraction()

    def _fraction(self) -> float:
        n = max(1, self.request.n_iter)
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.iteration + within) / n)

    @property
    def queue_wait(self) -> float | None:
        return None if self.started is None else self.started - self.created

    def eta_relative(self) -> float:
        if self.started is None:
            return 0.0
        p = self._fraction()
        elapsed = time.time() - self.started
        return elapsed / p - elapsed if p > 0 else 0.0

    def summary(self, position: int | None = None) -> dict[str, Any]:
        """The job as GET /api/jobs/{id} answers it."""
        seconds = None if self.finished is None or self.started is None else self.finished - self.started
        return {
            "id": self.id, "state": self.state, "mode": self.request.mode,
            "progress": round(self.progress, 4), "iteration": self.iteration, "n_iter": self.request.n_iter,
            "step": self.step, "steps": self.steps, "position": position, "error": self.error,
            "images": self.images, "queue_wait": self.queue_wait, "seconds": seconds,
        }  # fmt: skip

    async def wait(self) -> None:
        """Until the job has finished, without holding a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with _LOCK:
            if self.done.is_set():
                return
            self._waiters.append((loop, future))
        await future

    def _finish(self, state: str) -> None:
        with _LOCK:
            self.state, self.finished = state, time.time()
            self.done.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_LOCK = threading.Lock()


class JobQueue:
    """FIFO of jobs and the one worker thread that runs them on `engine`."""

    def __init__(self, engine: Engine, outputs: Outputs, limits: Limits, *, keep: int = 256) -> None:
        self.engine, self.outputs, self.limits = engine, outputs, limits
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending: list[Job] = []  # queued, in order (for positions and cancelling)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.last: Job | None = None
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="ddpm-serve-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------ the API side
    def submit(self, request: GenerationRequest) -> Job:
        """Queue a checked request; RequestError 503 when the queue is full or the server is stopping."""
        self.engine.check(request)
        job = Job(request)
        with self._lock:
            if self._closing:
                raise RequestError("the server is shutting down", 503)
            if len(self._pending) >= self.limits.max_queue:
                raise RequestError(f"the queue is full ({self.limits.max_queue} jobs); try again later", 503)
            self._pending.append(job)
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                old_id, old = next(iter(self._jobs.items()))
                if not old.done.is_set():
                    break
                del self._jobs[old_id]
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0 = running, 1 = next, …; None once finished."""
        with self._lock:
            if job is self.current:
                return 0
            return self._pending.index(job) + 1 if job in self._pending else None

    def cancel(self, job: Job) -> None:
        """Cancel this job only: dropped if queued, stopped at its next step if running."""
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
                job.error = "cancelled before it started"
                job._finish("cancelled")
                return
        job.cancel.set()

    def interrupt(self) -> Job | None:
        """A1111's interrupt: cancel the running job (the one whose progress /sdapi/v1/progress shows)."""
        job = self.current
        if job is not None:
            job.cancel.set()
        return job

    def skip(self) -> Job | None:
        job = self.current
        if job is not None:
            job.skip.set()
        return job

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, *, timeout: float = 30.0) -> None:
        """Stop: queued jobs are cancelled, the running one is cancelled at its next step; wait for it."""
        with self._lock:
            self._closing = True
            pending, self._pending = self._pending, []
        for job in pending:
            job.error = "cancelled: the server stopped"
            job._finish("cancelled")
        current = self.current
        if current is not None:
            current.cancel.set()
        self._queue.put(None)
        if timeout > 0:
            self._worker.join(timeout)

    # ---------------------------------------------------------------------------------- the worker side
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job not in self._pending:  # cancelled while queued
                    continue
                self._pending.remove(job)
                self.current = job
            job.state, job.started = "running", time.time()
            try:
                state = self._run(job)
            except Exception as e:  # the job fails alone; the worker serves the next
                job.error, job.status = _describe(e)
                state = "failed"
            finally:
                with self._lock:
                    self.current, self.last = None, job
            job.preview = None
            job._finish(state)

    def _run(self, job: Job) -> str:
        req = job.request
        for it in range(req.n_iter):
            if job.cancel.is_set():
                job.error = "interrupted"
                return "cancelled"
            job.iteration, job.step, job.steps = it, 0, req.steps
            seed = req.seed + it * req.batch_size
            try:
                images, metadata = self.engine.generate(req, seed, req.batch_size, _callback(job))
            except Skipped:
                continue
            except Cancelled:
                job.error = "interrupted"
                return "cancelled"
            for image, meta in zip(images, metadata):
                settings = _settings(req, int(meta["seed"]))
                job.images.append(self.outputs.add(image, meta, job=job.id, settings=settings))
                job.metadata.append(meta)
        job.iteration, job.step = req.n_iter, job.steps
        return "done"

    def info(self, job: Job) -> str:
        """A1111's `info` string for the job's images."""
        return a1111_info(job.request, job.metadata, [r["infotext"] for r in job.images],
                          model=self.engine.name, model_hash=self.engine.model_hash,
                          interrupted=job.state == "cancelled")  # fmt: skip


def _settings(req: GenerationRequest, seed: int) -> dict[str, Any]:
    """The A1111 fields that regenerate one image of `req` (the page's "reuse these settings")."""
    return {"prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": seed, "steps": req.steps,
            "cfg_scale": req.cfg_scale, "width": req.width, "height": req.height,
            "sampler_name": req.sampler_name, "mode": req.mode,
            "denoising_strength": None if req.mode == "txt2img" else req.strength}  # fmt: skip


def _callback(job: Job) -> Any:
    def on_step(step: int, steps: int, x0_hat: Tensor) -> None:
        job.preview = x0_hat[0].detach().float().cpu().clone()
        job.step, job.steps = step, steps
        if job.cancel.is_set():
            raise Cancelled
        if job.skip.is_set():
            job.skip.clear()
            raise Skipped

    return on_step


def _describe(e: Exception) -> tuple[str, int]:
    """(message, HTTP status) for a failed job."""
    text = str(e).strip() or type(e).__name__
    oom = isinstance(e, MemoryError) or type(e).__name__.endswith("OutOfMemoryError")
    if oom or any(t in text for t in _OOM_TEXTS):
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        return ("out of memory: ask for fewer images (batch_size), a smaller size or fewer at once; "
                f"the server goes on ({type(e).__name__})"), 507
    if isinstance(e, RequestError):
        return text, e.status
    if isinstance(e, ValueError):  # the pipeline's own checks: bad input it found
        return text, 422
    return f"the job failed: {type(e).__name__}: {text}", 500
