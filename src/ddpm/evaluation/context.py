"""What the metrics of one evaluation share: the model, its samples, the real data and the judge,
each computed once on first use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.model_meta import ModelMeta
from .judge import Judge, JudgeRecipe, judge_for_tensors

__all__ = ["EvalOptions", "EvalContext", "balanced_labels"]


@dataclass
class EvalOptions:
    """Knobs of `evaluate`; `sampling` is a `ddpm.pipelines.SamplingOptions` (None: the model's defaults)
    whose seed is left unset: `seed` is image 0's and the seed of every other draw."""

    num: int = 1000
    seed: int = 0
    sampling: Any = None
    batch_size: int = 100
    bpd_num: int = 100
    fd_repeats: int = 5
    fd_split: str = "train"
    progress: bool = False
    fid_reference: str | None = None  # the `fid` metric: a folder of real images or an .npz of mu / sigma
    fid_weights: str | None = None  # the Inception weights file (None: $DDPM_INCEPTION_WEIGHTS)
    fid_dims: int = 2048
    fid_resize: str = "tf"

    def __post_init__(self) -> None:
        for name in ("num", "batch_size", "bpd_num", "fd_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.fd_split not in ("train", "test", "all"):
            raise ValueError(f"fd_split must be 'train', 'test' or 'all', got {self.fd_split!r}")
        if getattr(self.sampling, "seed", None) is not None:
            raise ValueError("give the seed as EvalOptions.seed, not in the sampling options")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampling": asdict(self.sampling) if self.sampling is not None else None}

    def sampling_for(self, pipe: Any, seed: int) -> Any:
        """The pipeline's complete sampling options for images starting at `seed`."""
        return pipe.resolve(self.sampling).replace(seed=seed)


def balanced_labels(num: int, num_classes: int) -> Tensor:
    """Class labels `[num]` in sorted blocks of (almost) equal size: num=100, K=10 gives ten 0s, ten 1s, …"""
    return torch.arange(num) * num_classes // num


class EvalContext:
    """Lazily computed inputs of the metrics for one model (a `PixelPipeline`)."""

    def __init__(
        self,
        pipe: Any,
        options: EvalOptions | None = None,
        *,
        samples: Tensor | None = None,
        sample_labels: Tensor | None = None,
        judge: Judge | None = None,
        feature_extractor: Callable[[Tensor], Tensor] | None = None,
        judge_cache: Path | str | None = None,
        judge_recipe: JudgeRecipe | None = None,
    ) -> None:
        self.pipe = pipe
        self.meta: ModelMeta = pipe.meta
        self.options = options or EvalOptions()
        if samples is not None and samples.ndim != 4:
            raise ValueError(f"samples must be images [N, C, H, W], got shape {list(samples.shape)}")
        self._samples = samples
        self._sample_labels = sample_labels
        self._judge = judge
        self._extractor = feature_extractor
        self._judge_cache = judge_cache
        self._judge_recipe = judge_recipe or JudgeRecipe()
        self._real: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._class_names: list[str] | None = None
        self._features: dict[str, Tensor] = {}
        self._shared: EvalContext | None = None  # the context whose real data and judge this one uses

    def derive(self, options: EvalOptions) -> EvalContext:
        """A context for other samples of the same model (`options`: e.g. another sampler or step count) that
        uses this one's real data, judge and real-data features, so a sweep computes them once."""
        other = EvalContext(self.pipe, options, feature_extractor=self._extractor, judge=self._judge,
                            judge_cache=self._judge_cache, judge_recipe=self._judge_recipe)  # fmt: skip
        other._shared = self._shared or self
        return other

    # -- the model --------------------------------------------------------------------------------

    @property
    def conditioning(self) -> str:
        """ "none", "class" or "text" (from the model file's metadata)."""
        return self.meta.condition

    @property
    def num_classes(self) -> int | None:
        return self.meta.conditioning.num_classes

    @property
    def dataset_name(self) -> str:
        return self.meta.data.dataset

    # -- samples ----------------------------------------------------------------------------------

    def samples(self) -> tuple[Tensor, Tensor | None]:
        """Generated images `[N, C, H, W]` in [-1, 1] and their class labels `[N]` (None if unconditional)."""
        if self._samples is None:
            o = self.options
            labels = None
            if self.conditioning == "class":
                labels = balanced_labels(o.num, int(self.num_classes))
            elif self.conditioning != "none":
                raise ValueError(
                    f"sample metrics for {self.conditioning}-conditional models need prompts; "
                    "use a metric made for them (e.g. --metric alignment) or a class/unconditional model"
                )
            from tqdm.auto import tqdm

            chunks = []  # image i is seeded seed + i, so generating in chunks changes no image
            with tqdm(total=o.num, unit="img", desc="sampling", disable=not o.progress) as bar:
                for start in range(0, o.num, o.batch_size):
                    n = min(o.batch_size, o.num - start)
                    images, _ = self.pipe.generate(
                        n, class_labels=None if labels is None else labels[start : start + n],
                        options=o.sampling_for(self.pipe, o.seed + start), batch_size=o.batch_size,
                    )  # fmt: skip
                    chunks.append(images.detach().float().cpu())
                    bar.update(n)
            self._samples, self._sample_labels = torch.cat(chunks), labels
        return self._samples, self._sample_labels

    # -- real data and the judge -----------------------------------------------------------------

    def real(self, split: str) -> tuple[Tensor, Tensor | None]:
        """The model's dataset at its size and channels: images `[N, C, H, W]`, labels `[N]` or None."""
        if self._shared is not None:
            return self._shared.real(split)
        if split not in self._real:
            from ..data import load_dataset

            data = self.meta.data
            if not self.dataset_name:
                raise ValueError(
                    "the model file does not name its dataset (meta 'data.dataset'); cannot compare"
                )
            ds = load_dataset(
                self.dataset_name,
                split=split,
                image_size=data.image_size,
                channels=data.channels,
                **data.options,
            )
            images, labels = ds.as_tensor()
            self._real[split] = (images.float(), labels)
            self._class_names = ds.class_names
        return self._real[split]

    def judge(self) -> Judge:
        """The classifier trained on the model's dataset (cached on disk, trained on first use)."""
        if self._judge is None and self._shared is not None:
            self._judge = self._shared.judge()
        if self._judge is None:
            train_x, train_y = self.real("train")
            test_x, test_y = self.real("test")
            if train_y is None:
                raise ValueError(
                    f"dataset {self.dataset_name!r} has no class labels, so no judge can be trained on it; "
                    "pass a feature_extractor for the Fréchet distance"
                )
            names = self._class_names
            self._judge = judge_for_tensors(
                Path(self.dataset_name).name or "data",
                train_x,
                train_y,
                test_x,
                test_y,
                num_classes=len(names) if names else int(train_y.max()) + 1,
                class_names=names,
                recipe=self._judge_recipe,
                cache=self._judge_cache,
                progress=self.options.progress,
            )
        return self._judge

    @property
    def has_extractor(self) -> bool:
        """Whether features come from a given extractor rather than the judge."""
        return self._extractor is not None

    def features(self, key: str, images: Tensor) -> Tensor:
        """Features `[N, D]` of `images` under the extractor in use, memoised under `key`."""
        if key != "samples" and self._shared is not None:  # real data: computed once, by the shared context
            return self._shared.features(key, images)
        if key not in self._features:
            fn = self._extractor or self.judge().features
            self._features[key] = torch.as_tensor(fn(images)).detach().to("cpu", torch.float64)
        return self._features[key]

    @property
    def feature_name(self) -> str:
        if self._extractor is not None:
            return getattr(self._extractor, "__name__", "custom features")
        return "judge penultimate layer"
