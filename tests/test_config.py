"""Config loading: defaults <- YAML <- key=value overrides <- typed values; saved for reproduction."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, load_config, save_config


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
