"""Register the trained model in MLflow and apply the promotion gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.images import CPU


@dsl.component(**CPU)
def register_and_promote(candidate: Input[Model], comparison: Input[Artifact], data: Input[Dataset],
                         model_name: str, base_model: str, gate_metric: str, gate_min_margin: float,
                         auto_promote: bool, shared_volume: str, kfp_run_id: str, mlflow_tracking_uri: str,
                         mlflow_parent_run_id: str, decision: Output[Markdown], gate_max_p: float = 1.0
                         ) -> NamedTuple("Registered", version=str, promoted=bool):  # fmt: skip
    """New version of `model_name` (@challenger) with lineage tags, its evaluation recorded, and
    @champion moved only if the gate passes: the candidate beats the base model (with paired
    p < `gate_max_p` when that is below 1) and the champion, by more than the margin (scores from
    the same evaluation run). Not cached: it changes the registry."""
    from collections import namedtuple

    from components.launch import resolve
    from components.registry_launch import register_candidate

    out = namedtuple("Registered", ["version", "promoted"])
    version, promoted, text = register_candidate(
        resolve(candidate.path), resolve(comparison.path), resolve(data.path), model_name, base_model,
        gate_metric, gate_min_margin, auto_promote, shared_volume, kfp_run_id, mlflow_tracking_uri,
        mlflow_parent_run_id, candidate_meta=dict(candidate.metadata), gate_max_p=gate_max_p)
    with open(decision.path, "w") as f:
        f.write(text)
    print(text)
    return out(version, promoted)


@dsl.component(**CPU)
def run_outcome(model_name: str, kfp_run_id: str, mlflow_tracking_uri: str) -> NamedTuple(
        "Outcome", registered_model=str, registered_version=str, model_uri=str, promoted=bool, promotion=str,
        promotion_reason=str, champion_version=str):  # fmt: skip
    """The pipeline's outputs: the version this run registered and its promotion decision, read
    from the registry. It runs after the exit handler's group (KFP 2.17 takes pipeline outputs
    only from top-level tasks, and register-and-promote sits inside the ExitHandler and a
    dsl.If branch), so it reads back what register-and-promote recorded instead of taking its
    outputs. Not cached: the registry changes."""
    from collections import namedtuple

    from components.registry_launch import run_outcome as read_outcome

    got = read_outcome(model_name, kfp_run_id, mlflow_tracking_uri)
    print(" ".join(f"{k}={v}" for k, v in got.items()))
    fields = ["registered_model", "registered_version", "model_uri", "promoted", "promotion", "promotion_reason",
              "champion_version"]  # fmt: skip
    return namedtuple("Outcome", fields)(*(got[f] for f in fields))
