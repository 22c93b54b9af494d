"""`ddpm serve`: a local web UI and an AUTOMATIC1111-compatible HTTP API over one model (ddpm.server).

The model is loaded once, from the path on the command line only (an SD 1.x file or diffusers folder, or a
ddpm pixel/text model file or run folder); one worker runs the queued jobs. Safe by default: it binds
127.0.0.1; `--host 0.0.0.0` without `--api-auth` prints a warning; with `--api-auth` every route needs
HTTP Basic credentials; cross-site requests cannot change state; files are served by opaque id from
`--outputs` only. Ctrl-C / SIGTERM cancel the running job at its next step and exit cleanly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import UsageError
from ._common import model_kind

HELP = "serve a local web UI and an AUTOMATIC1111-compatible HTTP API for one model"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help=HELP,
        description=HELP + ". Open http://127.0.0.1:7860/ in a browser, or point an A1111 client "
        "(e.g. webuiapi) at it.",
        epilog="example: ddpm serve --model v1-5-pruned-emaonly.safetensors --outputs outputs/serve",
    )
    p.add_argument("--model", required=True, help="an SD 1.x file or diffusers folder, or a ddpm model/run")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]",
                   help="require HTTP Basic credentials on every route")
    p.add_argument("--outputs", default="outputs/serve", metavar="DIR",
                   help="folder for the generated PNGs (nothing is written elsewhere; default outputs/serve)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="SD only: float32, float16, bfloat16 (fp16 on GPU)")
    p.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="an origin (scheme://host:port) whose pages may call the API; none by default")
    p.set_defaults(func=run)
    return p


def bind_warning(host: str, credentials: list[tuple[str, str]]) -> str | None:
    """The warning for a bind that other machines can reach without credentials, or None."""
    if host in LOOPBACK or credentials:
        return None
    return (f"warning: --host {host} lets other machines reach this server and nothing asks them for "
            "credentials; add --api-auth USER:PASS, or bind 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    from ..server.safety import parse_credentials

    credentials = parse_credentials(args.api_auth)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must lie in 1 … 65535, got {args.port}")
    for origin in args.cors_allow_origin:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") != 2:
            raise UsageError(f"--cors-allow-origin takes scheme://host[:port], got {origin!r}")
    kind = model_kind(args.model)  # a missing or foreign path fails here, before torch loads
    warning = bind_warning(args.host, credentials)
    if warning:
        print(warning, file=sys.stderr)

    import uvicorn

    from ..server.app import create_app

    pipeline = _load(args.model, kind, args.device, args.dtype)
    app = create_app(pipeline, outputs=args.outputs, credentials=credentials,
                     cors_origins=tuple(args.cors_allow_origin), loopback_only=args.host in LOOPBACK)
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (outputs in {args.outputs})",
          file=sys.stderr)
    jobs = app.app.state.jobs  # type: ignore[attr-defined]

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Ctrl-C / SIGTERM: cancel the queue and the running job at its next step, so the requests
            # waiting on them answer and uvicorn's graceful stop does not wait for the whole queue
            if not self.should_exit:
                print("stopping: the queue and the running job are cancelled", file=sys.stderr)
            jobs.close(timeout=0)
            super().handle_exit(sig, frame)

    # after a clean stop uvicorn re-raises the signal, so the exit status is the shell's 130 / 143
    Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run()
    return 0


def _load(path: str, kind: str, device: str, dtype: str) -> Any:
    if kind in ("sd", "pickle"):
        from ..pipelines.stable_diffusion import StableDiffusion

        return StableDiffusion.load(path, device=device, dtype=dtype)
    from ..pipelines import PixelPipeline

    if dtype != "auto":
        raise UsageError("--dtype applies to Stable Diffusion checkpoints only")
    return PixelPipeline.load(path, device=device)
