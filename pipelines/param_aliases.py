"""Old spellings of the pipeline's parameters (issue 16.9): one naming rule for the pipeline,
the stage's prefix plus the stage config's own key (`sft_max_steps`, `grpo_max_steps`, `sft_lr`,
`grpo_lr`, as `longrl train sft|grpo max_steps=... lr=...`), and `frames` as `longrl eval`
names the frame count. A renamed parameter keeps working under its old name, with a one-line
deprecation note: in `--param` of `longrl pipeline submit|run-local` (parse_params) and as a
keyword of the pipeline called from Python (kfp.local). The compiled IR has the new names only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

log = logging.getLogger("longrl.pipeline")

PARAM_ALIASES: dict[str, str] = {"grpo_steps": "grpo_max_steps"}  # old -> new

_NOTED: set[str] = set()


class ParamAliasError(ValueError):
    pass


def note_deprecated(old: str, new: str) -> None:
    """Once per process: a note, not a wall."""
    if old not in _NOTED:
        _NOTED.add(old)
        log.warning("note: pipeline parameter %s is deprecated, use %s", old, new)


def canonical_name(name: str, declared: Collection[str] | None = None) -> str:
    """`name`, or its new spelling when it is an old one. With `declared` (the parameters of the
    pipeline at hand), an old name that the pipeline still declares (a package compiled before
    the rename) is kept as it is."""
    new = PARAM_ALIASES.get(name)
    if new is None or (declared is not None and (name in declared or new not in declared)):
        return name
    note_deprecated(name, new)
    return new


def canonical_params(params: Mapping[str, Any], declared: Collection[str] | None = None,
                     new_wins: bool = False) -> dict[str, Any]:  # fmt: skip
    """Rename old spellings. Both spellings with different values: an error, or with `new_wins`
    (defaults under user values, as run-local's demo table under --param) the new one is kept."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        new = canonical_name(name, declared)
        if new != name and new in params:  # both spellings: the new one's own value is used
            if params[new] != value and not new_wins:
                raise ParamAliasError(f"pipeline parameter {name} (deprecated) and {new} both given "
                                      f"({value!r} vs {params[new]!r}); keep {new}")  # fmt: skip
            continue
        out[new] = value
    return out
