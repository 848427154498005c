"""Evaluation components: find the current champion, then evaluate new vs base vs champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU, GPU


@dsl.component(**CPU)
def resolve_champion(model_name: str, mlflow_tracking_uri: str) -> NamedTuple("Champion", found=bool, model_uri=str):
    """The registered version behind @champion as a pinned URI (`models:/name/7`), so the eval
    step's cache key changes when the champion does. Not cached: the registry moves."""
    import os
    from collections import namedtuple

    from components.launch import tracking_uri

    out = namedtuple("Champion", ["found", "model_uri"])
    mlflow_tracking_uri = tracking_uri(mlflow_tracking_uri)
    if not mlflow_tracking_uri:
        print("no MLflow: no champion to compare with")
        return out(False, "")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    from common import registry

    mv = registry.version_by_alias(model_name, registry.CHAMPION)
    if mv is None:
        print(f"{model_name} has no @champion yet")
        return out(False, "")
    print(f"{model_name}@champion is version {mv.version}")
    return out(True, f"models:/{model_name}/{mv.version}")


@dsl.component(**GPU)
def evaluate_models(candidate: Input[Model], base: Input[Model], data: Input[Dataset], champion_uri: str,
                    benchmarks: str, frames: int, limit: int, overrides: list, max_error_rate: float,
                    shared_volume: str, mlflow_tracking_uri: str, mlflow_experiment: str,
                    comparison: Output[Artifact], report: Output[Markdown], metrics: Output[Metrics],
                    sft: Input[Model] = None):
    """`longrl eval` of the candidate, the base model, the SFT model (`sft`: given when the run
    trained SFT then GRPO) and the champion (when there is one) with identical settings; writes
    comparison.json (scores, paired tests, the base -> SFT -> GRPO learning table), a Markdown
    table, and the scores as KFP metrics. A failed evaluation is recorded, not hidden: the
    promote step refuses a candidate whose evaluation did not succeed."""
    import os
    from pathlib import Path

    from components.eval_launch import evaluate_all, markdown
    from components.launch import overrides_list, parent_run_id, resolve, tracking_uri

    mlflow_tracking_uri = tracking_uri(mlflow_tracking_uri)
    work = Path(comparison.path)
    work.mkdir(parents=True, exist_ok=True)
    models = {"candidate": resolve(candidate.path), "base": resolve(base.path)}
    if sft is not None:
        models["sft"] = resolve(sft.path)
    if champion_uri:
        import tempfile

        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
        from common.registry import materialize

        # Downloaded outside the output artifact (which must stay small: predictions, metrics).
        models["champion"] = materialize(champion_uri, tempfile.mkdtemp(prefix="champion-"), shared_volume)
    result = evaluate_all(models, resolve(data.path), work, benchmarks, frames, limit, overrides_list(overrides),
                          max_error_rate, mlflow_tracking_uri,
                          parent_run_id(mlflow_tracking_uri, experiment=mlflow_experiment), champion_uri=champion_uri)
    with open(report.path, "w") as f:
        f.write(markdown(result))
    for role, info in result["roles"].items():
        for key, value in info["metrics"].items():
            if key.endswith(("/score", "/accuracy")):
                metrics.log_metric(f"{role}/{key}", value)
    comparison.metadata.update({"champion_uri": champion_uri,
                                "candidate_succeeded": result["roles"]["candidate"]["succeeded"]})
    print(markdown(result))
