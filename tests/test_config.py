"""Config: TOML in and out, unknown keys rejected by name, dotted overrides, values checked."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm.config import Config, config_from_dict, config_to_dict, dump_config, load_config, parse_override
from ddpm.models.unet import UNetConfig


def _write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_round_trip_through_toml(tmp_path):
    assert load_config(None) == Config()
    assert load_config(_write(tmp_path, dump_config(Config()))) == Config()


def test_non_default_values_round_trip(tmp_path):
    cfg = load_config(None, [
        "run.name=ünïcode \"quoted\"", "data.image_size=16", "data.condition=class",
        "model.channel_mult=[1, 2]", "model.num_classes=10", "model.num_head_channels=16",
        "diffusion.min_snr_gamma=5", "diffusion.beta_end=0.0123456789012345678", "train.lr=1e-20",
        "train.grad_clip=0", "sample.guidance_scale=2", "diffusion.timestep_sampling=logit_normal",
        "diffusion.timestep_loc=0.5", "data.options={num = 40000, pair_fraction = 0.9, labels = \"none\"}",
    ])
    assert cfg.data.options == {"num": 40000, "pair_fraction": 0.9, "labels": "none"}
    assert cfg.run.name == 'ünïcode "quoted"' and cfg.model.channel_mult == (1, 2)
    assert cfg.train.lr == 1e-20 and isinstance(cfg.sample.guidance_scale, float)
    assert load_config(_write(tmp_path, dump_config(cfg))) == cfg
    # None where the default is not None is written as "none" and read back as None
    cfg = dataclasses.replace(cfg, model=UNetConfig(num_heads=4, num_head_channels=None))
    cfg2 = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=None))
    assert load_config(_write(tmp_path, dump_config(cfg2))) == cfg2


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(min_value=1e-30, max_value=1e30, allow_nan=False),
    name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1,
                 max_size=12).filter(lambda s: s not in (".", "..")),
    steps=st.integers(1, 2**40),
)
def test_dump_load_is_exact_for_any_value(tmp_path_factory, lr, name, steps):
    cfg = config_from_dict({"run": {"name": name}, "train": {"lr": lr, "steps": steps}})
    path = tmp_path_factory.mktemp("c") / "c.toml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def test_unknown_keys_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key train\.learning_rate.*keys of \[train\]: steps, "):
        load_config(_write(tmp_path, "[train]\nlearning_rate = 1e-4\n"))
    with pytest.raises(ValueError, match=r"unknown key model\.channels.*model_channels"):
        load_config(None, ["model.channels=64"])
    with pytest.raises(ValueError, match=r"unknown config section \[optim\].*valid sections: run, data"):
        load_config(_write(tmp_path, "[optim]\nlr = 1\n"))
    with pytest.raises(ValueError, match=r"unknown key text\.dim.*context_length, width"):
        load_config(None, ["text.dim=3"])


def test_overrides_parse_toml_literals_with_string_fallback():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("model.channel_mult = [1, 2, 4]") == (["model", "channel_mult"], [1, 2, 4])
    assert parse_override("data.dataset=/data/my images") == (["data", "dataset"], "/data/my images")
    assert parse_override("data.flip=true") == (["data", "flip"], True)
    assert parse_override('run.name="007"') == (["run", "name"], "007")
    cfg = load_config(None, ["train.steps=5", "data.dataset=faces", "train.device=cpu"])
    assert (cfg.train.steps, cfg.data.dataset, cfg.train.device) == (5, "faces", "cpu")
    for bad in ("train.lr", "lr=1", "a.b.c=1", ".lr=1"):
        with pytest.raises(ValueError, match="section.key"):
            parse_override(bad)


def test_types_and_ranges_are_checked_with_the_key_named(tmp_path):
    cases = {
        "train.steps=ten": "train.steps must be an integer",
        "train.steps=1.5": "train.steps must be an integer",
        "train.lr=true": "train.lr must be a number",
        "data.flip=1": "data.flip must be true or false",
        "model.channel_mult=3": "model.channel_mult must be a list",
        "data.condition=label": r"data.condition must be one of \['none', 'class', 'text', 'clip_image'\]",
        "diffusion.prediction=noise": "diffusion.prediction must be one of",
        "diffusion.timestep_sampling=beta": r"timestep_sampling must be one of \['uniform', 'logit_normal'\]",
        "diffusion.timestep_scale=0": "diffusion.timestep_scale must be positive",
        "sample.sampler=dpm++": r"sample.sampler must be one of \[.*'dpmpp_2m'",
        "train.batch_size=10": r"train.batch_size \(10\) must be a multiple of train.grad_accum \(4\)",
        "train.ema_decay=1.0": r"train.ema_decay must lie in \[0, 1\)",
        "model.num_heads=0": "num_heads must be a positive integer",
        "data.image_size=none": None,
        "data.options=3": "data.options must be a table",
        "data.options={flip = true}": r"data.options cannot set flip: use the \[data\] / \[train\] key",
    }
    for override, message in cases.items():
        overrides = [override, "train.grad_accum=4", "train.batch_size=16"] if "batch_size" not in override \
            else [override, "train.grad_accum=4"]
        if message is None:
            assert load_config(None, overrides).data.image_size is None
            continue
        with pytest.raises(ValueError, match=message):
            load_config(None, overrides)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(_write(tmp_path, "[train\n"))


def test_the_config_names_are_the_registries_of_the_code_that_implements_them():
    from ddpm.config import choices
    from ddpm.sampling import SAMPLERS
    from ddpm.schedules import SCHEDULES

    assert tuple(SAMPLERS) == choices.SAMPLER_NAMES
    assert tuple(SCHEDULES) == choices.SCHEDULE_NAMES


def test_config_to_dict_is_plain():
    d = config_to_dict(Config())
    assert d["model"]["channel_mult"] == [1, 2, 2, 2] and d["data"]["image_size"] is None
    assert config_from_dict(d) == Config()


def test_a_warmup_longer_than_the_run_warns_with_the_peak_it_reaches():
    with pytest.warns(UserWarning, match=r"warmup_steps \(500\) exceeds train.steps \(100\).* peaks at 20%"):
        load_config(None, ["train.steps=100", "train.warmup_steps=500"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["train.steps=500", "train.warmup_steps=500"])
