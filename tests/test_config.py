"""Config loading: defaults <- YAML <- key=value overrides <- typed values; saved for reproduction."""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from common.config import ConfigError, describe_config, load_config, save_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    use_kl: bool = True
    mode: str | None = None
    optim: Inner = field(default_factory=Inner)


def test_yaml_then_overrides_then_values(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 20\noptim:\n  lr: 0.001\n")
    cfg = load_config(Outer, cfg_file, ["optim.betas=[0.5, 0.6]", "use_kl=false", "steps=30"], values={"name": "x", "mode": None})
    assert cfg == Outer(name="x", steps=30, use_kl=False, optim=Inner(lr=0.001, betas=[0.5, 0.6]))
    saved = save_config(cfg, tmp_path / "out")
    assert load_config(Outer, saved) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [("optim.lrr=1", "unknown config key"), ("steps=ten", "steps: expected an integer"),
     ("use_kl=3", "use_kl: expected true/false"), ("steps", "key.sub=value")],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_exponent_without_dot_is_a_float():
    assert load_config(Outer, None, ["optim.lr=2e-5"]).optim.lr == 2e-5
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(Outer, None, ["optim.lr=fast"])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


# -- bad input names the key and the fix (issue 16.8/16.10, 17.9) --------------------------------

def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\noptim:\n  lr: [1,\n  betas: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "not valid YAML at line" in msg and "fix that line" in msg
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, tmp_path / "list.yaml")


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"optim\.lrr \(did you mean optim\.lr\?\)"):
        load_config(Outer, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="known: "):  # nothing close: the known keys are listed
        load_config(Outer, None, ["zzz=1"])


@dataclass
class Renamed:
    ALIASES: typing.ClassVar[dict[str, str]] = {"steps": "max_steps", "optim.old": "optim"}
    max_steps: int = 1
    optim: Inner = field(default_factory=Inner)


def test_old_spellings_load_with_a_deprecation_note(tmp_path, caplog, monkeypatch):
    import common.config

    # the note is once per process: an earlier test that used `steps=` must not hide it here
    monkeypatch.setattr(common.config, "_NOTED", set())
    caplog.set_level(logging.WARNING, logger="longrl.config")
    cfg = load_config(Renamed, None, ["steps=7", "optim.old.lr=0.5"])
    assert (cfg.max_steps, cfg.optim.lr) == (7, 0.5)
    f = tmp_path / "c.yaml"
    f.write_text("steps: 9\noptim:\n  old:\n    lr: 0.25\n")
    cfg = load_config(Renamed, f)
    assert (cfg.max_steps, cfg.optim.lr) == (9, 0.25)
    assert any("deprecated" in r.message and "max_steps" in r.message for r in caplog.records)
    f.write_text("steps: 9\nmax_steps: 3\n")
    with pytest.raises(ConfigError, match="both steps .deprecated. and max_steps"):
        load_config(Renamed, f)


def test_training_configs_use_one_spelling():
    from training.grpo.config import GRPOConfig
    from training.sft.config import SFTConfig

    for cls in (GRPOConfig, SFTConfig):
        cfg = load_config(cls, None, ["max_steps=5", "video.num_frames=6"])
        assert (cfg.max_steps, cfg.video.num_frames) == (5, 6)
        old = load_config(cls, None, ["steps=5", "video.sampling.num_frames=6"])
        assert (old.max_steps, old.video.num_frames) == (5, 6)
    g = load_config(GRPOConfig, None, ["video.num_frames=6", "video.max_pixels=3136"])
    assert (g.video.sampling.num_frames, g.video.sampling.max_pixels) == (6, 3136)


def test_describe_config_round_trips_with_every_comment():
    from training.grpo.config import GRPOConfig
    from training.sft.config import SFTConfig

    for cls in (GRPOConfig, SFTConfig):
        cfg = load_config(cls, None, ["max_steps=5", "video.num_frames=6"])
        text = describe_config(cfg)
        assert yaml.safe_load(text) == to_dict(cfg)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert "max_steps: 5  # " in text and "num_frames: 6  # frames per video" in text
        undocumented = [ln for ln in lines if "  # " not in ln]
        assert not undocumented, undocumented  # every field carries its meaning


@pytest.mark.parametrize("cls_name", ["sft", "grpo"])
@pytest.mark.parametrize(("override", "message"), [
    ("max_steps=-1", "max_steps must be >= "),
    ("video.num_frames=0", "video.num_frames must be >= 1"),
    ("video.sampling.num_frames=0", "video.num_frames must be >= 1"),
    ("video.max_pixels=-1", "video.max_pixels must be >= 0"),
])
def test_bad_values_name_the_key(cls_name, override, message):
    from training.grpo.config import GRPOConfig
    from training.sft.config import SFTConfig

    cfg = load_config({"sft": SFTConfig, "grpo": GRPOConfig}[cls_name], None, [override])
    with pytest.raises(ValueError, match=message):
        cfg.check()
