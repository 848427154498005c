"""One naming rule for the pipeline's parameters (issue 16.9): `grpo_max_steps` like
`sft_max_steps` (and the stage configs' `max_steps`); the old `grpo_steps` still works, in
`--param` and in the pipeline's Python call, as the same argument, with a deprecation note."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.

import logging

import pytest

from pipelines import param_aliases
from pipelines.submit import SubmitError, parse_params

DECLARED = {"grpo_max_steps": {"type": "NUMBER_INTEGER"}, "sft_max_steps": {"type": "NUMBER_INTEGER"},
            "frames": {"type": "NUMBER_INTEGER"}}  # fmt: skip


@pytest.fixture()
def notes(caplog, monkeypatch):
    monkeypatch.setattr(param_aliases, "_NOTED", set())  # the note is once per process
    caplog.set_level(logging.WARNING, logger="longrl.pipeline")
    return caplog


def test_old_and_new_param_names_parse_to_the_same_argument(notes):
    new = parse_params(["grpo_max_steps=7", "sft_max_steps=3"], DECLARED)
    assert not notes.records
    old = parse_params(["grpo_steps=7", "sft_max_steps=3"], DECLARED)
    assert old == new == {"grpo_max_steps": 7, "sft_max_steps": 3}
    assert [r.getMessage() for r in notes.records] == [
        "note: pipeline parameter grpo_steps is deprecated, use grpo_max_steps"
    ]
    with pytest.raises(
        SubmitError, match="grpo_steps and --param grpo_max_steps are the same parameter"
    ):
        parse_params(["grpo_steps=7", "grpo_max_steps=8"], DECLARED)
    # A package compiled before the rename still declares grpo_steps: the name is kept as is.
    assert parse_params(["grpo_steps=5"], {"grpo_steps": {"type": "NUMBER_INTEGER"}}) == {
        "grpo_steps": 5
    }
    with pytest.raises(SubmitError, match="unknown pipeline parameter 'grpo_stepz'"):
        parse_params(["grpo_stepz=5"], DECLARED)


def test_canonical_params_both_spellings():
    assert param_aliases.canonical_params({"grpo_steps": 2, "frames": 4}) == {
        "grpo_max_steps": 2,
        "frames": 4,
    }
    assert param_aliases.canonical_params({"grpo_steps": 2, "grpo_max_steps": 2}) == {
        "grpo_max_steps": 2
    }
    with pytest.raises(
        param_aliases.ParamAliasError, match="grpo_steps .deprecated. and grpo_max_steps both"
    ):
        param_aliases.canonical_params({"grpo_steps": 2, "grpo_max_steps": 9})
    # Demo table under --param values (run-local): the new spelling's value wins.
    assert param_aliases.canonical_params(
        {"grpo_steps": 2, "grpo_max_steps": 9}, new_wins=True
    ) == {"grpo_max_steps": 9}


def _grpo_max_steps_args(spec: dict) -> set[str]:
    """The max_steps argument the compiled pipeline hands the grpo component (any branch)."""
    import json

    found = set()

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("componentRef", {}).get("name", "")
            if ref.startswith("comp-grpo"):
                found.add(json.dumps(node["inputs"]["parameters"]["max_steps"], sort_keys=True))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def test_pipeline_call_takes_the_old_name_as_the_same_argument(notes, tmp_path):
    import yaml
    from kfp import compiler, dsl

    from pipelines.long_video_reasoning import build_pipeline

    inner = build_pipeline()
    ir_inputs = set(inner.component_spec.inputs)
    assert "grpo_max_steps" in ir_inputs and "grpo_steps" not in ir_inputs

    def outer_with(**kw):
        @dsl.pipeline(name="outer")
        def outer():
            inner(**kw)

        path = tmp_path / f"{sorted(kw)[0]}.yaml"
        compiler.Compiler().compile(outer, str(path))
        return next(yaml.safe_load_all(path.read_text()))

    new = outer_with(grpo_max_steps=7)
    assert not notes.records
    old = outer_with(grpo_steps=7)
    assert "grpo_steps is deprecated, use grpo_max_steps" in notes.text
    assert old == new  # the same IR, the same argument
    args = old["root"]["dag"]["tasks"]["long-video-reasoning"]["inputs"]["parameters"]
    assert args["grpo_max_steps"] == {"runtimeValue": {"constant": 7}} and "grpo_steps" not in args
    # ... which reaches the grpo component as its max_steps (the stage config's key)
    assert _grpo_max_steps_args(old) == {
        '{"componentInputParameter": "pipelinechannel--grpo_max_steps"}'
    }
