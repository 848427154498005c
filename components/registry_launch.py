"""The promote step's work: log the candidate checkpoint and its data in a nested MLflow run,
register it (@challenger) with lineage tags, record its evaluation, apply the gate."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SPLITS = ("sft", "rl", "eval")


def log_data(run: Any, data_dir: Path) -> str:
    """Log every split of the dataset folder as a run input; returns one digest for the whole
    dataset ("sft:<d>,rl:<d>,eval:<d>", MLflow's digests). A folder without `save_to_disk` splits
    gets a sha256 over its files instead (prefixed `sha256:` so the two are never confused)."""
    digests = []
    for split in SPLITS:
        folder = data_dir / split
        if (folder / "dataset_info.json").is_file():
            digest = run.log_dataset(folder, name=f"longvideo-reason-{split}", context=split)
            digests.append(f"{split}:{digest}")
    if digests:
        return ",".join(digests)
    h = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(data_dir)).encode())
        h.update(path.read_bytes())
    return f"sha256:{h.hexdigest()[:16]}"


def training_checkpoint(meta: dict[str, Any], model_dir: Path) -> tuple[str | None, str | None, dict[str, str]]:
    """(source URI, run id, lineage tags) of the checkpoint the training run logged, if it is of
    `model_dir`; (None, None, tags) otherwise."""
    run_id, source, logged_dir = meta.get("mlflow_run_id"), meta.get("mlflow_model_source"), meta.get("mlflow_model_dir")
    tags = {"training.run_id": run_id, "training.stage": meta.get("stage", "")} if run_id else {}
    same = logged_dir and Path(logged_dir).resolve() == Path(model_dir).resolve()
    if run_id and source and same:
        return source, run_id, tags
    return None, None, tags


def evaluated_champion(comparison: dict[str, Any]) -> str:
    """The champion version the eval step compared against ("" when there was none)."""
    uri = comparison.get("champion_uri")
    if uri is None:
        raise ValueError("comparison.json names no champion_uri (written by an older eval step?)")
    return uri.rsplit("/", 1)[-1] if uri else ""


def base_gate(comparison: dict[str, Any], metric: str, min_margin: float, max_p: float = 1.0) -> str:
    """Why the candidate does not beat the base model it was trained from ("" when it does, or
    when the base model's evaluation gave nothing to compare). A first run has no champion, and
    without this check any candidate that evaluated at all - one that learned nothing - became
    @champion. The candidate's `metric` must exceed the base model's by more than `min_margin`,
    measured in the same evaluation; with `max_p` < 1 the paired test of that benchmark
    (eval.compare: McNemar over questions) must also give p < max_p."""
    base = comparison["roles"].get("base")
    cand = comparison["roles"]["candidate"]["metrics"].get(metric)
    if not base or not base["succeeded"] or base["metrics"].get(metric) is None or cand is None:
        return ""  # nothing to hold it against (a missing candidate metric: the registry gate says so)
    ref = base["metrics"][metric]
    if not cand > ref + min_margin:
        return f"{metric} {cand:.4g} does not beat the base model's {ref:.4g} by more than {min_margin:g}"
    pair = comparison.get("paired", {}).get("base", {}).get(metric.split("/")[0])
    if max_p < 1.0 and (pair is None or pair.get("p_value") is None or not pair["p_value"] < max_p):
        p = "n/a" if pair is None or pair.get("p_value") is None else f"{pair['p_value']:.3g}"
        return f"{metric} gain over the base model ({cand:.4g} vs {ref:.4g}) is not significant: p = {p} >= {max_p:g}"
    return ""


def base_gain_text(comparison: dict[str, Any], metric: str) -> str:
    """The candidate's gain over the base model on the gate's benchmark, for the decision text."""
    pair = comparison.get("paired", {}).get("base", {}).get(metric.split("/")[0])
    if not pair or pair.get("difference") is None:
        return "n/a"
    return f"{100 * pair['difference']:+.1f} pp (wins {pair['wins']}, losses {pair['losses']}, p = {pair['p_value']:.3g})"


def register_candidate(model_dir: Path, comparison_dir: Path, data_dir: Path, model_name: str, base_model: str,
                       gate_metric: str, gate_min_margin: float, auto_promote: bool, shared_volume: str,
                       kfp_run_id: str, tracking_uri: str, parent_run_id: str,
                       candidate_meta: dict[str, Any] | None = None, gate_max_p: float = 1.0
                       ) -> tuple[str, bool, str]:  # fmt: skip
    """Returns (version, promoted, Markdown summary of the decision). `candidate_meta`: the
    trained model artifact's metadata; when it names the training run's logged checkpoint of
    this same folder, that is what gets registered (no second copy of the weights). The gate:
    the candidate must beat the base model (base_gate) and then the champion (the registry's
    gate_and_promote)."""
    from components.launch import mlflow_env
    from components.launch import tracking_uri as resolve_uri

    tracking_uri = resolve_uri(tracking_uri)
    if not tracking_uri:
        return "", False, "MLflow is not configured (no tracking URI): nothing registered.\n"
    from common import registry, tracking

    os.environ.update(mlflow_env(tracking_uri, parent_run_id))
    comparison = json.loads((comparison_dir / "comparison.json").read_text())
    cand = comparison["roles"]["candidate"]
    champ = comparison["roles"].get("champion")
    with tracking.stage_run("register", tags={"registry.model": model_name}) as run:
        digest = log_data(run, data_dir)
        source, source_run, training = training_checkpoint(candidate_meta or {}, model_dir)
        if source is None:  # the training run logged no checkpoint of this folder: log it here
            source = run.log_checkpoint(model_dir, location_uri=registry.location_uri(model_dir, shared_volume))
            source_run = run.run_id
        run.log_dict(comparison, "eval/comparison.json")
        tags = {"data.digest": digest, "pipeline.kfp_run_id": kfp_run_id, "pipeline.mlflow_run_id": parent_run_id,
                "base_model": base_model, "eval.benchmarks": ",".join(comparison["benchmarks"]),
                "register.run_id": run.run_id, **training}  # fmt: skip
        mv = registry.register_version(model_name, source, run_id=source_run, tags=tags, alias=registry.CHALLENGER)
        registry.record_eval(model_name, mv.version, cand["metrics"], cand["succeeded"],
                             settings_digest=comparison.get("settings_digest"))  # fmt: skip
        not_over_base = base_gate(comparison, gate_metric, gate_min_margin, gate_max_p) if auto_promote else ""
        if not_over_base:
            promoted, reason = False, not_over_base
            registry.record_decision(model_name, mv.version, {"decision": "rejected", "reason": reason,
                                                              "alias": registry.CHAMPION, "actor": "pipeline"})  # fmt: skip
        elif auto_promote:
            # The champion this run evaluated ("" none); its numbers only if its evaluation here
            # succeeded - never its older recorded score (issue 15.12, 15.14).
            evaluated = evaluated_champion(comparison)
            champion_metrics = champ["metrics"] if champ and champ["succeeded"] else None
            gate = registry.GateConfig(metric=gate_metric, min_margin=gate_min_margin)
            d = registry.gate_and_promote(model_name, mv.version, gate, eval_succeeded=cand["succeeded"],
                                          candidate_metrics=cand["metrics"], champion_metrics=champion_metrics,
                                          evaluated_champion=evaluated,
                                          settings_digest=comparison.get("settings_digest"))  # fmt: skip
            promoted, reason = d.promote, d.reason
            if base_gain_text(comparison, gate_metric) != "n/a":
                reason = f"beats the base model ({base_gain_text(comparison, gate_metric)}); {reason}"
        else:
            promoted, reason = False, "auto_promote is off (promote by hand: longrl registry promote)"
            registry.record_decision(model_name, mv.version, {"decision": "rejected", "reason": reason,
                                                              "alias": registry.CHAMPION, "actor": "pipeline"})  # fmt: skip
        outcome = {"registry.model": model_name, "registry.version": mv.version,
                   "promotion.decision": "promoted" if promoted else "rejected", "promotion.reason": reason}  # fmt: skip
        run.set_tags(outcome)
        # The pipeline's own MLflow run names its result too (the KFP UI shows it on this step).
        pipeline_run = tracking.parent_of(run.run_id)
        if pipeline_run and tracking.kfp_plugin_run():
            pipeline_run = tracking.parent_of(pipeline_run) or pipeline_run  # task run -> pipeline run
        if pipeline_run:
            tracking.StageRun(pipeline_run, "pipeline").set_tags(outcome)
    text = (f"**{model_name} v{mv.version}** registered as @challenger "
            f"({'promoted to @champion' if promoted else 'not promoted'}: {reason})\n\n"
            f"- gate: `{gate_metric}` must beat the base model and the champion by more than {gate_min_margin:g}"
            f"{f' (over the base model with paired p < {gate_max_p:g})' if gate_max_p < 1 else ''}\n"
            f"- candidate vs base model: {base_gain_text(comparison, gate_metric)}\n"
            f"- candidate `{gate_metric}` = {cand['metrics'].get(gate_metric, 'n/a')}; evaluation "
            f"{'succeeded' if cand['succeeded'] else 'failed: ' + cand['reason']}\n"
            f"- data digest: {digest}\n- source: {mv.source}\n")  # fmt: skip
    return str(mv.version), promoted, text


NOT_REGISTERED = "not-registered"


def run_outcome(model_name: str, kfp_run_id: str, tracking_uri: str) -> dict[str, Any]:
    """What this pipeline run registered and decided, read back from the registry (the pipeline's
    outputs; issue 15). The version is the newest of `model_name` tagged with this run's
    pipeline.kfp_run_id (register_candidate's tag); the decision is its promotion.* tags. A run
    that registered nothing (no MLflow, or register never ran) gives version "" and promotion
    "not-registered"."""
    from components.launch import tracking_uri as resolve_uri

    out: dict[str, Any] = {"registered_model": model_name, "registered_version": "", "model_uri": "",
                           "promoted": False, "promotion": NOT_REGISTERED, "promotion_reason": "",
                           "champion_version": ""}  # fmt: skip
    uri = resolve_uri(tracking_uri)
    if not uri:
        out["promotion_reason"] = "MLflow is not configured (no tracking URI)"
        return out
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mlflow import MlflowClient

    from common import registry

    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        out["promotion_reason"] = f"no registered model {model_name}"
        return out
    champion = registry.version_by_alias(model_name, registry.CHAMPION)
    out["champion_version"] = str(champion.version) if champion else ""
    mine = [mv for mv in client.search_model_versions(f"name = '{model_name}'")
            if mv.tags.get("pipeline.kfp_run_id") == kfp_run_id]  # fmt: skip
    if not mine:
        out["promotion_reason"] = f"run {kfp_run_id} registered no version of {model_name}"
        return out
    mv = max(mine, key=lambda v: int(v.version))
    decision = mv.tags.get("promotion.decision", "")
    out.update(registered_version=str(mv.version), model_uri=f"models:/{model_name}/{mv.version}",
               promoted=decision == "promoted", promotion=decision or "undecided",
               promotion_reason=mv.tags.get("promotion.reason", ""))  # fmt: skip
    return out
