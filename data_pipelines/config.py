"""Typed configs: YAML + dotted ``key=value`` overrides → nested ``@dataclass`` objects.

Every config in the project (data, tokenizer, model, pretrain, finetune, steer) is a tree of
dataclasses. ``load_config(Cls, path, overrides)`` reads the YAML with ``yaml.safe_load`` (python
tags are refused), applies overrides such as ``trainer.max_steps=20``, and converts every value to
its annotated type, raising :class:`ConfigError` naming the dotted key on an unknown key or a bad
value — before any work. It lives in ``data_pipelines`` because all three packages use it and
imports only flow upward.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from data_pipelines.errors import PhysfmError

T = TypeVar("T")


class ConfigError(PhysfmError, ValueError):
    """A config problem; the message names the dotted key and, where known, the file."""


def read_yaml(path: str | Path) -> Any:
    """Read YAML safely: python object tags and malformed files become a :class:`ConfigError` that
    names ``FILE:LINE:COLUMN`` of the problem."""
    return read_yaml_with_positions(path)[0]


# Where each key of a config was written: dotted key → "FILE:LINE:COLUMN" (1-based, as editors
# count).
Positions = dict[str, str]


def read_yaml_with_positions(path: str | Path) -> tuple[Any, Positions]:
    """:func:`read_yaml`, plus the position of every mapping key in the file (for error
    messages)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the node tree keeps line/column marks
    except yaml.YAMLError as err:  # includes constructor errors for !!python/object tags
        raise ConfigError(_yaml_error_line(path, err)) from None
    positions: Positions = {}
    _collect_positions(node, "", path, positions)
    return data, positions


def _yaml_error_line(path: Path, err: yaml.YAMLError) -> str:
    """``FILE:LINE:COL: what is wrong`` from PyYAML's multi-line message."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if isinstance(err, yaml.constructor.ConstructorError):
        return f"{where}: not a safe YAML config: {problem}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start is not mark:  # e.g. where an unclosed bracket opened
        context = f"{context} at line {start.line + 1}, column {start.column + 1}"
    return f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")


def _collect_positions(node: Any, prefix: str, path: Path, out: Positions) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        out[key] = f"{path}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
        _collect_positions(value_node, key, path, out)


# The dotted key a config error is about: "unknown config key KEY (…)", "KEY: …" or "KEY=value …".
_ERROR_KEY = re.compile(r"^(?:unknown config key )?([A-Za-z_][\w.\[\]]*)(?=[:= (])")


def error_position(message: str, positions: Positions) -> str | None:
    """Where the key that ``message`` is about was written (its nearest written ancestor), if
    anywhere."""
    match = _ERROR_KEY.match(message)
    if match is None:
        return None
    key = re.sub(r"\[\d+\]", "", match.group(1))
    while key:
        if key in positions:
            return positions[key]
        key = key.rpartition(".")[0]
    return None


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, converting and checking every value against its type,
    then validate the whole tree (:func:`validate_tree`), sections the data leaves at their defaults
    included."""
    obj = _build(cls, data, prefix)
    validate_tree(obj)
    return obj


def validate_tree(obj: Any) -> None:
    """Call ``validate()`` on every dataclass in ``obj``'s tree, children before parents, so a
    section absent from the YAML (left at its defaults, or set only by an override) is checked like
    any other. A plain ``ValueError`` from a ``validate()`` is reported as a
    :class:`ConfigError`."""
    if isinstance(obj, (list, tuple)):
        for item in obj:
            validate_tree(item)
        return
    if isinstance(obj, dict):
        for item in obj.values():
            validate_tree(item)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        # a model config shared with plain-PyTorch code may raise ValueError
        except ValueError as err:
            raise ConfigError(str(err)) from None


def check_optimizer(cfg: Any, section: str) -> None:
    """The optimiser fields every training config shares, checked one way (each only where ``cfg``
    has it): ``lr > 0``, ``0 <= min_lr_ratio <= 1``, ``warmup_steps >= 0``, ``weight_decay >= 0``,
    ``grad_clip >= 0`` and two ``betas`` in ``[0, 1)``.  ``section`` is the dotted key the fields
    sit under (``optim``)."""

    def has(name: str) -> bool:
        return hasattr(cfg, name)

    if has("lr") and not cfg.lr > 0:
        raise ConfigError(f"{section}.lr: must be > 0, got {cfg.lr}")
    if has("min_lr_ratio") and not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"{section}.min_lr_ratio: must be in [0, 1], got {cfg.min_lr_ratio}")
    for name in ("warmup_steps", "weight_decay", "grad_clip"):
        if has(name) and not getattr(cfg, name) >= 0:
            raise ConfigError(f"{section}.{name}: must be >= 0, got {getattr(cfg, name)}")
    if has("betas") and (len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas)):
        raise ConfigError(f"{section}.betas: expected two values in [0, 1), got {list(cfg.betas)}")


def _build(cls: type[T], data: dict[str, Any] | None, prefix: str) -> T:
    """``from_dict`` without the validation pass (run once, over the finished tree)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (valid: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{prefix or 'config'}: {err}") from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "1e-3" as a string
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


INCLUDE_KEY = "include"


def resolve_includes(
    data: Any, base_dir: Path, key: str = "", depth: int = 0, positions: Positions | None = None
) -> Any:
    """A mapping with ``include: other.yaml`` is that file's content updated by the mapping's own
    keys, so ``model: {include: configs/model/tiny.yaml, n_layer: 2}`` reuses the model zoo.  Paths
    resolve against the including file's folder, then the working directory.  ``positions`` (dotted
    key → FILE:LINE:COLUMN) gains the included files' keys, so an error names the file that holds
    the key."""
    if not isinstance(data, dict):
        return data
    if depth > 8:
        raise ConfigError(f"{key or 'config'}: includes nest deeper than 8 (a cycle?)")
    out = {
        k: resolve_includes(v, base_dir, f"{key}.{k}" if key else k, depth, positions)
        for k, v in data.items()
        if k != INCLUDE_KEY
    }
    if INCLUDE_KEY in data:
        target = Path(str(data[INCLUDE_KEY]))
        candidates = [target] if target.is_absolute() else [base_dir / target, Path.cwd() / target]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            where = f"{key}.{INCLUDE_KEY}" if key else INCLUDE_KEY
            raise ConfigError(f"{where}: included file {target} not found")
        content, included_positions = read_yaml_with_positions(found)
        # the including file's own keys (already recorded) override the included
        if positions is not None:
            for inner, where in included_positions.items():
                positions.setdefault(f"{key}.{inner}" if key else inner, where)
        included = resolve_includes(content, found.parent, key, depth + 1, positions) or {}
        if not isinstance(included, dict):
            raise ConfigError(f"{found}: an included config must be a mapping")
        out = merge(included, out)
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """YAML file (optional, with ``include:`` sections) + dotted overrides → validated ``cls``
    instance. An error about a key written in a file names that file, line and column (an included
    file's own)."""
    data: dict[str, Any] = {}
    positions: Positions = {}
    if path is not None:
        loaded, positions = read_yaml_with_positions(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = resolve_includes(loaded or {}, Path(path).parent, positions=positions)
    from_overrides = parse_overrides(overrides)
    data = merge(data, from_overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        message = str(err)
        match = _ERROR_KEY.match(message)
        if match and _has_key(from_overrides, match.group(1)):
            raise ConfigError(f"override {message}") from None
        where = error_position(message, positions) or path
        raise ConfigError(f"{where}: {message}" if where else message) from None


def _has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in re.sub(r"\[\d+\]", "", dotted).split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain dict (for saving next to checkpoints)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
