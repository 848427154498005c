"""Typed configuration: dataclasses with defaults, loaded from YAML, overridden with `key.sub=value`.

Every stage keeps one flat-ish dataclass of its own (nested dataclasses allowed). The same
functions load it from a file, apply command-line overrides and save the resolved config next to
the stage's outputs so a run can be reproduced exactly.

One convention for every command: `--config FILE` then positional `key.sub=value` overrides.
A config class may declare `ALIASES = {"old.key": "new.key"}` (a ClassVar) for spellings it
renamed; an old spelling still works and logs a one-line deprecation note. `describe_config`
renders the resolved config as YAML with each field's source comment (`--print-config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import logging
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

log = logging.getLogger("longrl.config")

T = TypeVar("T")

CONFIG_FILENAME = "config.yaml"


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML-parsed value against a type hint; raise ConfigError naming the key."""
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
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "2e-5" (no dot) as a string; users mean a number.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build `cls` from a mapping, rejecting unknown keys (a typo must not pass silently)."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        hints_text = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(names), n=1, cutoff=0.6)
            hints_text.append(f"{prefix}{k} (did you mean {prefix}{close[0]}?)" if close else prefix + k)
        known = "" if all("did you mean" in h for h in hints_text) else f"; known: {', '.join(sorted(names))}"
        raise ConfigError(
            f"unknown config key(s) {', '.join(hints_text)} for {cls.__name__}{known} "
            "(--print-config lists every key with its meaning)"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-YAML-able dict of a config dataclass (Paths become strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        data = set_path(data, path, value)
    return data


def set_path(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Copy of `data` with the nested key `path` set to `value`."""
    data = dict(data)
    node = data
    for part in path[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[path[-1]] = value
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Defaults of `cls`, then the YAML file (if any), then `key.sub=value` overrides, then
    `values` (dotted keys -> already-typed values, e.g. from CLI options; None is skipped)."""
    data: dict[str, Any] = {}
    aliases: dict[str, str] = getattr(cls, "ALIASES", {}) or {}
    if path is not None:
        data = _apply_aliases(read_yaml_mapping(path), aliases, f"in {path}")
    base = to_dict(cls())  # type: ignore[call-arg]
    merged = _deep_merge(base, data)
    for text in overrides or []:
        keys, value = parse_override(text)
        merged = set_path(merged, _alias_path(keys, aliases), value)
    for key, value in (values or {}).items():
        if value is not None:
            merged = set_path(merged, _alias_path(key.split("."), aliases), value)
    return from_dict(cls, merged)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; ConfigError naming the file (and line) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{where}: {problem}; fix that line "
                          "(the file is a mapping of key: value, nested by indentation)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text (YAML) file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping (key: value lines) at the top level, "
                          f"not a {type(loaded).__name__}")
    return loaded


_NOTED: set[str] = set()


def _deprecated(old: str, new: str, where: str) -> None:
    if old not in _NOTED:  # once per process: a note, not a wall
        _NOTED.add(old)
        log.warning("note: config key %s is deprecated (%s), use %s", old, where, new)


def _alias_path(keys: list[str], aliases: dict[str, str]) -> list[str]:
    """Map a dotted key through the aliases (an alias may rename a prefix: `a.b` -> `c`)."""
    for n in range(len(keys), 0, -1):
        old = ".".join(keys[:n])
        if old in aliases:
            new = aliases[old]
            _deprecated(".".join(keys), ".".join([*new.split("."), *keys[n:]]), "override")
            return [*new.split("."), *keys[n:]]
    return keys


def _apply_aliases(data: dict[str, Any], aliases: dict[str, str], where: str) -> dict[str, Any]:
    """Move values written under an old spelling (nested mapping from a file) to the new one."""
    for old, new in aliases.items():
        node, parts = data, old.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node.pop(parts[-1])
        _deprecated(old, new, where)
        target = data
        for part in new.split(".")[:-1]:
            target = target.setdefault(part, {})
        last = new.split(".")[-1]
        if isinstance(value, dict) and isinstance(target.get(last), dict):
            clash = sorted(set(value) & set(target[last]))
            if clash:
                raise ConfigError(f"{where}: {old}.{clash[0]} and {new}.{clash[0]} both given; keep {new}.{clash[0]}")
            target[last] = {**target[last], **value}
        elif last in target:
            raise ConfigError(f"{where}: both {old} (deprecated) and {new} given; keep {new}")
        else:
            target[last] = value
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def save_config(cfg: Any, out_dir: str | Path, filename: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config next to a stage's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


# -- describing a config (--print-config) ------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source (and its base classes'): the trailing `# ...` on
    its line, else the comment lines just above it (how every config here documents its fields)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        if dataclasses.is_dataclass(klass):
            out.update({k: v for k, v in _own_comments(klass).items() if v or k not in out})
    return out


def _own_comments(cls: type) -> dict[str, str]:
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    body = ast.parse(src).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = next((comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                     if n in comments), "")
        if not text:
            above, n = [], node.lineno - 1
            while n >= 1 and n in comments and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            text = " ".join(a for a in above if not a.startswith("--"))
        out[node.target.id] = text
    return out


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def describe_config(cfg: Any) -> str:
    """The resolved config as YAML (loadable back with --config), each field with its comment."""
    out: list[str] = []

    def walk(obj: Any, indent: str) -> None:
        comments = field_comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            note = comments.get(f.name, "")
            tail = f"  # {note}" if note else ""
            if dataclasses.is_dataclass(value):
                if not tail and type(value).__doc__ and not type(value).__doc__.startswith(type(value).__name__ + "("):
                    tail = f"  # {type(value).__doc__.strip().splitlines()[0]}"
                out.append(f"{indent}{f.name}:{tail}")
                walk(value, indent + "  ")
            else:
                plain = to_dict(obj)[f.name]
                out.append(f"{indent}{f.name}: {_scalar(plain)}{tail}")

    walk(cfg, "")
    return "\n".join(out) + "\n"


# -- the resume rule ----------------------------------------------------------------------------

def check_resume(cfg: Any, out_dir: str | Path, restart_hint: str) -> None:
    """Refuse to resume OUT with settings the rule does not allow (cfg.resume_problems, from the
    class's RESUMABLE keys), naming each changed key. Nothing to compare: nothing to refuse."""
    saved_path = Path(out_dir) / CONFIG_FILENAME
    if not saved_path.is_file():
        return
    saved = _apply_aliases(read_yaml_mapping(saved_path), getattr(type(cfg), "ALIASES", {}) or {},
                           f"in {saved_path}")
    problems = cfg.resume_problems(saved)
    if problems:
        raise ConfigError(
            f"{out_dir} holds a run with other settings, so it cannot be resumed with these: "
            f"{'; '.join(problems)}. A resume may change only run length, checkpointing, logging and "
            f"service endpoints ({', '.join(type(cfg).RESUMABLE)}); use a new --out, "
            f"or {restart_hint} to start this folder over")
