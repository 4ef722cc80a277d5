"""Typed config loading: overrides, includes, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from data_pipelines.config import ConfigError, load_config


@dataclass
class Inner:
    width: int = 4
    rate: float = 1e-3
    kind: Literal["a", "b"] = "a"
    levels: list[int] = field(default_factory=lambda: [8, 5])

    def validate(self) -> None:
        if self.width < 1:
            raise ValueError(f"inner.width: must be >= 1, got {self.width}")


@dataclass
class Outer:
    seed: int = 0
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_yaml_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ninner:\n  rate: 1e-2\n")
    cfg = load_config(Outer, path, ["inner.width=7", "inner.levels=[8,8,5]", "name=run"])
    assert cfg == Outer(seed=3, name="run", inner=Inner(width=7, rate=0.01, levels=[8, 8, 5]))


def test_include_merges_under_own_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("width: 9\nkind: b\n")
    (tmp_path / "c.yaml").write_text("inner:\n  include: base.yaml\n  width: 2\n")
    assert load_config(Outer, tmp_path / "c.yaml").inner == Inner(width=2, kind="b")


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["inner.depth=3"], "unknown config key inner.depth"),
        (["inner.width=abc"], "inner.width: expected an integer"),
        (["inner.kind=c"], "inner.kind"),
        (["inner.width=0"], "inner.width: must be >= 1"),
        (["seed"], "expected key=value"),
    ],
)
def test_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, overrides)


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not a safe YAML config"):
        load_config(Outer, path)
    assert not marker.exists()


@dataclass
class WithBadDefault:
    seed: int = 0
    # a default that validate() refuses
    inner: Inner = field(default_factory=lambda: Inner(width=0))


def test_absent_section_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")  # no inner: section at all
    with pytest.raises(ConfigError, match="inner.width: must be >= 1"):
        load_config(WithBadDefault, path)
    with pytest.raises(ConfigError, match="inner.width: must be >= 1"):
        load_config(Outer, path, ["inner.width=0"])  # a section set only by an override
    assert load_config(Outer, path).inner == Inner()  # defaults validate fine


def test_children_validate_before_parents():
    order = []

    @dataclass
    class Child:
        def validate(self) -> None:
            order.append("child")

    @dataclass
    class Parent:
        child: Child = field(default_factory=Child)

        def validate(self) -> None:
            order.append("parent")

    from data_pipelines.config import validate_tree

    validate_tree(Parent())
    assert order == ["child", "parent"]


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=[0.9,1.0]", "optim.betas"),
        ("optim.warmup_steps=-5", "optim.warmup_steps"),
        ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
    ],
)
def test_pretrain_optim_is_validated(tmp_path, override, key):
    from physfm.train.config import load_pretrain_config

    path = tmp_path / "p.yaml"
    path.write_text("data:\n  tokens: [toks]\n")  # no optim: section
    with pytest.raises(ConfigError, match=key):
        load_pretrain_config(str(path), [override])


def test_pretrain_absent_sections_take_defaults(tmp_path):
    from physfm.train.config import OptimConfig, TrainerConfig, load_pretrain_config
    from physfm.train.strategies import StrategyConfig

    path = tmp_path / "p.yaml"
    path.write_text("data:\n  tokens: [toks]\n")
    cfg = load_pretrain_config(str(path))
    assert (cfg.optim, cfg.trainer, cfg.strategy) == (
        OptimConfig(),
        TrainerConfig(),
        StrategyConfig(),
    )


def test_pretrain_absent_strategy_section_given_bad_override(tmp_path):
    from physfm.train.config import load_pretrain_config

    path = tmp_path / "p.yaml"
    path.write_text("data:\n  tokens: [toks]\n")
    with pytest.raises(ConfigError, match="strategy.zero_stage: needs strategy.name=deepspeed"):
        load_pretrain_config(str(path), ["strategy.zero_stage=2"])


@pytest.mark.parametrize(
    "load,override,key",
    [
        ("tokenizer", "trainer.lr=-1", "trainer.lr"),
        ("tokenizer", "trainer.warmup_steps=-5", "trainer.warmup_steps"),
        ("refine", "train.lr=-1", "train.lr"),
        ("refine", "train.min_lr_ratio=2", "train.min_lr_ratio"),
        ("finetune", "optim.betas=[0.9]", "optim.betas"),
    ],
)
def test_other_optimiser_sections_validate_the_same_way(load, override, key):
    if load == "tokenizer":
        from tokenizer.training import TokenizerTrainConfig

        def loader(overrides):
            return load_config(TokenizerTrainConfig, None, overrides)
    elif load == "refine":
        from physfm.train.refine import load_refine_config

        def loader(overrides):
            return load_refine_config(None, ["ckpt=x", "data.shards=y", *overrides])
    else:
        from physfm.train.finetune import load_finetune_config

        def loader(overrides):
            return load_finetune_config(None, overrides)

    with pytest.raises(ConfigError, match=key):
        loader([override])


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: 0\ninner:\n  width: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    message = str(err.value)
    assert message.startswith(f"{path}:4:1: YAML syntax error: expected ',' or ']'"), message
    assert "at line 3, column 10" in message  # where the unclosed bracket opened


def test_an_error_inside_an_include_names_the_included_file_and_line(tmp_path):
    (tmp_path / "inner.yaml").write_text("# the inner section\nwidth: 4\nwidht: 5\n")
    (tmp_path / "broken_inner.yaml").write_text("width: 4\nname: [x\n")
    outer = tmp_path / "outer.yaml"
    outer.write_text("seed: 0\ninner:\n  include: inner.yaml\n")
    with pytest.raises(
        ConfigError, match=r"^\S+/inner\.yaml:3:1: unknown config key inner\.widht "
    ):
        load_config(Outer, outer)
    outer.write_text("seed: 0\ninner:\n  include: broken_inner.yaml\n")
    with pytest.raises(ConfigError, match=r"^\S+/broken_inner\.yaml:3:1: YAML syntax error"):
        load_config(Outer, outer)
    # A key the including file sets over the included one is the including file's.
    (tmp_path / "inner.yaml").write_text("width: 4\n")
    outer.write_text("seed: 0\ninner:\n  include: inner.yaml\n  width: oops\n")
    with pytest.raises(
        ConfigError, match=r"^\S+/outer\.yaml:4:3: inner\.width: expected an integer"
    ):
        load_config(Outer, outer)


def test_a_bad_override_is_blamed_on_the_override_not_the_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"^override inner\.width: expected an integer"):
        load_config(Outer, path, ["inner.width=oops"])
