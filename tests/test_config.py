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
