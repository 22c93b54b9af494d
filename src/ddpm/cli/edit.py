"""`ddpm edit`: edit one real image toward a target text with a text model (a ddpm text model or SD 1.x).

    ddpm edit --model M IN.png "target text" --method imagic --eta 0.7 --out DIR
    ddpm edit --resume-edit DIR --eta 0.4 0.6 0.8          # a strip from the saved state, no optimising
    ddpm edit --model M IN.png "target" --method img2img --strength 0.5 0.7 --out DIR
    ddpm edit --model M IN.png "target" --method inversion --source-prompt "what IN.png shows" --out DIR

Imagic (`ddpm.editing.imagic`) writes its state (edit.json, edit.safetensors, source.png) into DIR beside the
images, so `--resume-edit DIR` sweeps eta later. Each run writes one PNG per eta / strength and, for more
than one, strip.png (the source first). Bad input is one line naming the fix (cli/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import UsageError
from ._common import check_out_folder, finite_float, non_negative_int, positive_int

HELP = "edit a real image toward a target text (Imagic, img2img or DDIM inversion)"
METHODS = ("imagic", "img2img", "inversion")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "edit", help=HELP, description=HELP + ". Imagic optimises a text embedding to the image, fine-tunes "
        "the model there (LoRA on SD by default), then samples between it and the target text's embedding.",
        epilog='example: ddpm edit --model runs/shapes_txt2img in.png "a blue circle above a red square" '
        "--method imagic --eta 0.6 0.8 --out edits/",
    )  # fmt: skip
    p.add_argument(
        "image", nargs="?", help="the image to edit (any size: resized to the model's, with a warning)"
    )
    p.add_argument("target", nargs="?", help="the target text: what the edited image should show")
    p.add_argument("--model", help="a ddpm text model (run folder or .safetensors) or an SD 1.x checkpoint")
    p.add_argument("--method", choices=METHODS, default="imagic", help="default imagic")
    p.add_argument("--out", help="folder for the PNGs (and Imagic's state); default: --resume-edit's folder")
    p.add_argument(
        "--eta",
        type=finite_float,
        nargs="+",
        default=None,
        help="Imagic's interpolation eta in [0, 1.5] (0: the image, 1: the target), one or more",
    )
    p.add_argument(
        "--strength",
        type=finite_float,
        nargs="+",
        default=[0.6],
        help="img2img: share of the grid re-noised, in (0, 1] (default 0.6)",
    )
    p.add_argument("--source-prompt", help="inversion: a prompt describing the input image")
    p.add_argument("--resume-edit", metavar="DIR", help="render from the Imagic state saved in DIR")
    g = p.add_argument_group("Imagic optimisation (defaults per model kind; see ddpm.editing.ImagicSettings)")
    g.add_argument("--embedding-steps", type=non_negative_int, help="stage A steps (SD 500, pixel 100)")
    g.add_argument("--finetune-steps", type=non_negative_int, help="stage B steps (SD 1000, pixel 100)")
    g.add_argument("--lr", type=finite_float, help="stage A learning rate (SD 1e-3, pixel 1e-2)")
    g.add_argument("--finetune-lr", type=finite_float, help="stage B learning rate")
    g.add_argument("--finetune", choices=("lora", "full"), help="LoRA adapters (SD default) or all weights")
    g.add_argument("--lora-rank", type=positive_int, default=4, help="rank of the adapters (default 4)")
    g.add_argument(
        "--init-from-inversion",
        action="store_true",
        help="start stage C from the DDIM inversion of the image instead of the seed's noise",
    )
    s = p.add_argument_group("sampling (defaults: the model's)")
    s.add_argument("--sampler", help="sampler of stage C and img2img (inversion always uses ddim)")
    s.add_argument("--steps", type=positive_int, help="sampling steps")
    s.add_argument("--guidance", type=finite_float, metavar="SCALE", help="classifier-free guidance scale")
    s.add_argument("--seed", type=non_negative_int, help="seed of the noise (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _options(args: argparse.Namespace) -> Any:
    from ..pipelines import SamplingOptions

    fields = {
        k: getattr(args, a)
        for k, a in (
            ("sampler", "sampler"),
            ("steps", "steps"),
            ("guidance_scale", "guidance"),
            ("seed", "seed"),
        )
        if getattr(args, a, None) is not None
    }
    return SamplingOptions(**fields)  # fmt: skip


def _check(args: argparse.Namespace) -> None:
    """Everything that can be judged before torch and the model load."""
    from ..editing.imagic import check_eta, check_target

    for eta in args.eta or []:
        try:
            check_eta(eta)
        except ValueError as e:
            raise UsageError(f"--eta: {e}") from None
    if args.resume_edit is not None:
        given = [n for n in ("image", "target") if getattr(args, n)]
        if given:
            raise UsageError(f"--resume-edit renders the saved edit; drop the {' and '.join(given)} (start a "
                             "new edit without --resume-edit)")  # fmt: skip
        return
    if args.model is None or args.image is None or args.target is None:
        raise UsageError('give --model, the image and the target text: ddpm edit --model M IN.png "target '
                         'text" --out DIR (or --resume-edit DIR)')  # fmt: skip
    check_target(args.target)
    if args.out is None:
        raise UsageError("give --out DIR, the folder for the edited images")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"no such image file: {args.image!r}")
    if args.method == "inversion" and args.source_prompt is None:
        raise UsageError('--method inversion inverts the image under a prompt that describes it: add '
                         '--source-prompt "…"')  # fmt: skip
    if args.method != "imagic" and (args.eta is not None or args.init_from_inversion):
        raise UsageError(f"--eta and --init-from-inversion belong to --method imagic, not {args.method}")
    if args.method == "img2img":
        for s in args.strength:
            if not 0 < s <= 1:
                raise UsageError(f"--strength must lie in (0, 1] (1 = ignore the image), got {s}")


def _model(args: argparse.Namespace) -> Any:
    from ..editing import edit_model
    from ._common import model_kind

    kind = model_kind(args.model)
    if kind == "pickle":
        raise UsageError(f"{args.model!r} is a pickled checkpoint; convert it with `ddpm convert` first")
    if kind not in ("sd", "ddpm-text"):
        raise UsageError(
            f"{args.model!r} is a {kind[len('ddpm-') :]}-conditional model: editing from a text needs "
            "a text model (a ddpm model trained with data.condition = 'text', or SD 1.x)"
        )
    return edit_model(args.model)


def _write(out: Path, images: Any, names: list[str], source: Any, meta: dict[str, Any]) -> list[Path]:
    import torch

    from ..io.images import make_grid, save_png

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names):
        paths.append(save_png(out / f"{name}.png", image, {"ddpm": json.dumps({**meta, "image": name})}))
    if len(names) > 1:
        strip = make_grid(torch.cat([source, images]), nrow=len(names) + 1)
        paths.append(save_png(out / "strip.png", strip))
    return paths


def run(args: argparse.Namespace) -> int:
    _check(args)
    progress = not args.quiet
    if args.resume_edit is not None:
        out = check_out_folder(args.out or args.resume_edit)
        from ..editing import load_edit

        edit = load_edit(args.resume_edit, model=_model(args) if args.model else None)
        return _render(edit, args, out, progress)
    out = check_out_folder(args.out)
    model = _model(args)
    options = _options(args)
    if args.method == "imagic":
        from ..editing import ImagicSettings, imagic

        settings = ImagicSettings(embedding_steps=args.embedding_steps, embedding_lr=args.lr,
                                  finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
                                  finetune=args.finetune, lora_rank=args.lora_rank,
                                  init_from_inversion=args.init_from_inversion)  # fmt: skip
        edit = imagic(model, args.image, args.target, settings=settings, options=options, progress=progress)
        edit.save(out)
        for stage in ("embedding", "finetune"):
            r = edit.report[stage]
            print(
                f"stage {stage}: {r['steps']} steps in {r['seconds']:.1f} s "
                f"({r['seconds_per_step']:.3f} s/step), "
                f"loss {r['loss_before']:.4f} -> {r['loss_after']:.4f}, {r['trained_values']} trained values "
                f"(Adam state {r['adam_state_mb']} MB), peak memory {r['peak_memory_mb']} MB",
                file=sys.stderr,
            )
        return _render(edit, args, out, progress)
    from ..editing import img2img, inversion_edit

    source = model.pixels(args.image)
    meta = {"method": args.method, "target": args.target}
    if args.method == "img2img":
        images = img2img(
            model, source, args.target, strengths=args.strength, options=options, progress=progress
        )
        names = [f"img2img-s{s:.2f}" for s in args.strength]
    else:
        images, error = inversion_edit(model, source, args.target, source_prompt=args.source_prompt,
                                       options=options, progress=progress)  # fmt: skip
        names, meta["inversion_rmse"] = ["inversion"], error
        print(f"inversion: reconstruction RMSE {error:.4f} (in the model's space)", file=sys.stderr)
    for path in _write(out, images, names, source, meta):
        print(path)
    return 0


def _render(edit: Any, args: argparse.Namespace, out: Path, progress: bool) -> int:
    etas = args.eta or [0.7]
    images = edit.render(
        etas, init_from_inversion=True if args.init_from_inversion else None, progress=progress
    )
    r = edit.report["sampling"]
    print(
        f"stage sampling: {r['images']} image(s) in {r['seconds']:.1f} s, "
        f"peak memory {r['peak_memory_mb']} MB",
        file=sys.stderr,
    )
    meta = {"method": "imagic", "target": edit.target, "settings": edit.settings.to_dict()}
    for path in _write(out, images, [f"imagic-eta{e:.2f}" for e in etas], edit.source, meta):
        print(path)
    return 0
