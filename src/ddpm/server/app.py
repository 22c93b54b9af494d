"""The FastAPI application: the page at `/`, A1111's `/sdapi/v1/…` routes, our `/api/…` routes (jobs,
server-sent progress events, outputs by id), behind `SafetyMiddleware`. A route parses and checks its
request (`a1111.parse_request`), hands it to the job queue and answers; only the queue's worker calls the
pipeline (through `Engine`)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from .a1111 import Limits, RequestError, parse_request, sampler_list
from .engine import Engine
from .jobs import Job, JobQueue
from .outputs import Outputs
from .safety import SafetyMiddleware

__all__ = ["create_app"]

STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}  # fmt: skip
MODES = ("txt2img", "img2img", "inpaint")


def create_app(
    pipeline: Any,
    *,
    outputs: str | Path,
    name: str = "",
    credentials: list[tuple[str, str]] | None = None,
    cors_origins: tuple[str, ...] = (),
    loopback_only: bool = True,
    limits: Limits | None = None,
) -> FastAPI:
    """The server for one loaded pipeline (`StableDiffusion` or `PixelPipeline`), writing only into
    `outputs`. `app.state.jobs` is its `JobQueue` (closed when the app shuts down)."""
    limits = limits or Limits()
    engine = Engine(pipeline, name=name)
    store = Outputs(outputs)
    jobs = JobQueue(engine, store, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        await asyncio.to_thread(jobs.close)

    app = FastAPI(title="ddpm serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.jobs, app.state.engine, app.state.outputs = jobs, engine, store

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(e), "detail": str(e)}, status_code=e.status)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not JSON ({e})", 400) from None

    # ------------------------------------------------------------------------------------- the page
    @app.get("/")
    async def page() -> Response:
        return _static("index.html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC or name == "index.html":
            return JSONResponse({"error": "no such file"}, status_code=404)
        return _static(name)

    # ---------------------------------------------------------------------------------- A1111's API
    async def generate(request: Request, mode: str) -> JSONResponse:
        body = await body_of(request)
        req = parse_request(body, mode, limits, default_size=engine.default_size)
        job = jobs.submit(req)
        await job.wait()
        if job.state == "failed":
            return JSONResponse({"error": job.error, "detail": job.error, "job": job.id},
                                status_code=job.status)  # fmt: skip
        images = [base64.b64encode(store.png_bytes(r["id"])).decode() for r in job.images]
        parameters = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
        return JSONResponse({"images": images, "parameters": parameters, "info": jobs.info(job)})

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> JSONResponse:
        return await generate(request, "txt2img")

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request) -> JSONResponse:
        return await generate(request, "img2img")

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False) -> dict[str, Any]:
        job = jobs.current
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
        answer: dict[str, Any] = {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                                  "textinfo": None, "queue": jobs.pending_count()}  # fmt: skip
        if job is None:
            return answer
        state.update(job=job.id, job_count=job.request.n_iter, job_no=job.iteration,
                     sampling_step=job.step, sampling_steps=job.steps, interrupted=job.cancel.is_set(),
                     job_timestamp=str(int(job.created)))  # fmt: skip
        answer.update(progress=job.progress, eta_relative=job.eta_relative())
        if not skip_current_image:
            answer["current_image"] = _preview_b64(job, engine.kind)
        return answer

    @app.get("/sdapi/v1/samplers")
    async def samplers() -> list[dict[str, Any]]:
        return sampler_list()

    @app.get("/sdapi/v1/schedulers")
    async def schedulers() -> list[dict[str, Any]]:
        return [{"name": "automatic", "label": "Automatic"}, {"name": "uniform", "label": "Uniform"},
                {"name": "karras", "label": "Karras"}]  # fmt: skip

    @app.get("/sdapi/v1/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": _title(engine), "model_name": engine.name, "hash": engine.model_hash[:10] or None,
                 "sha256": None, "filename": engine.name, "config": None}]  # fmt: skip

    @app.get("/sdapi/v1/options")
    async def get_options() -> dict[str, Any]:
        return {"sd_model_checkpoint": _title(engine), "samples_format": "png"}

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise RequestError("options must be a JSON object")
        wanted = body.get("sd_model_checkpoint")
        if wanted is not None and wanted not in (_title(engine), engine.name):
            raise RequestError(
                f"this server serves only {_title(engine)!r}; a model loads from the command line "
                "(ddpm serve --model PATH), never from a request"
            )
        return {}

    @app.get("/sdapi/v1/scripts")
    async def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict[str, Any]:
        job = jobs.interrupt()
        return {"interrupted": None if job is None else job.id}

    @app.post("/sdapi/v1/skip")
    async def skip() -> dict[str, Any]:
        job = jobs.skip()
        return {"skipped": None if job is None else job.id}

    # ----------------------------------------------------------------------------------- our API
    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {"model": engine.describe(), "samplers": [s["name"] for s in sampler_list()],
                "limits": limits.__dict__}  # fmt: skip

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        mode = body.get("mode", "txt2img") if isinstance(body, dict) else None
        if mode not in MODES:
            raise RequestError(f"mode must be one of {list(MODES)}, got {mode!r}")
        req = parse_request(body, "img2img" if mode == "inpaint" else mode, limits,
                            default_size=engine.default_size)  # fmt: skip
        if mode == "inpaint" and req.mask is None:
            raise RequestError("inpaint needs a mask (a base64 image, white or opaque = repaint)")
        job = jobs.submit(req)
        return job.summary(jobs.position(job))

    def job_of(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r} on this server", 404)
        return job

    @app.get("/api/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        job = job_of(job_id)
        return job.summary(jobs.position(job))

    @app.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = job_of(job_id)
        jobs.cancel(job)
        return job.summary(jobs.position(job))

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, preview: bool = False) -> StreamingResponse:
        job = job_of(job_id)

        async def stream():  # type: ignore[no-untyped-def]
            last = None
            while True:
                done = job.done.is_set()
                summary = job.summary(jobs.position(job))
                key = (summary["state"], summary["iteration"], summary["step"], summary["position"])
                if key != last:
                    last = key
                    if preview and not done:
                        summary["preview"] = _preview_b64(job, engine.kind, data_url=True)
                    yield f"event: {'done' if done else 'progress'}\ndata: {json.dumps(summary)}\n\n"
                if done:
                    return
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})  # fmt: skip

    @app.get("/api/outputs")
    async def list_outputs() -> list[dict[str, Any]]:
        return store.records()

    @app.get("/api/outputs/{name}")
    async def get_output(name: str, download: bool = False) -> Response:
        out_id = name[:-4] if name.endswith(".png") else ""
        path = store.path(out_id)
        if path is None:
            return JSONResponse({"error": "no such output on this server"}, status_code=404)
        headers = {"cache-control": "no-store"}
        if download:
            headers["content-disposition"] = f'attachment; filename="{out_id}.png"'
        return Response(path.read_bytes(), media_type="image/png", headers=headers)

    return SafetyMiddleware(
        app, credentials=credentials, cors_origins=cors_origins, loopback_only=loopback_only,
        max_body=limits.max_body,
    )  # type: ignore[return-value]


def _title(engine: Engine) -> str:
    return f"{engine.name} [{engine.model_hash[:10]}]" if engine.model_hash else engine.name


def _static(name: str) -> Response:
    data = resources.files("ddpm.server").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"cache-control": "no-cache"})


def _preview_b64(job: Job, kind: str, *, data_url: bool = False) -> str | None:
    """The running job's x0_hat as a small PNG (base64): the image itself for pixel models, the first three
    latent channels stretched to [0, 255] for SD (a cheap look at the composition, not the decoded image)."""
    x = job.preview
    if x is None:
        return None
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    if kind == "pixel":
        x = (x.clamp(-1, 1) + 1) / 2
    else:
        lo = x.flatten(1).min(1).values[:, None, None]
        hi = x.flatten(1).max(1).values[:, None, None]
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    arr = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
    im = Image.fromarray(arr)
    if max(im.size) < 128:
        k = max(1, 128 // max(im.size))
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/png;base64,{b64}" if data_url else b64
