"""MLflow model registry: versions with lineage tags, `challenger`/`champion` aliases, and the
promotion gate. Aliases only - the deprecated registry stages are never used.

- `register_version(name, source, run_id, tags)` registers a checkpoint logged with
  `StageRun.log_checkpoint` (transformers flavour `models:/m-...` or a reference folder).
- Tags on a version: `data.digest`, `pipeline.kfp_run_id`, `pipeline.mlflow_run_id`,
  `base_model`, `eval.status` (succeeded/failed) and `eval.<metric>` for every eval metric.
- `decide(...)` is the gate as a pure function; `gate_and_promote(...)` applies it and records the
  decision (promoted or not, and why) as tags on the candidate version and as a history entry on
  the registered model (`decision.v<version>.<utc time>`), so every decision can be audited.
- `promote(...)` moves an alias by hand (the CLI), recorded the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

# The promotion lock, the shared client and error (common.registry_lock) and the read-only
# queries (common.registry_query) live in their own modules; they are re-exported here so every
# `from common.registry import ...` and `registry.X` keeps working.
from common.registry_lock import (  # noqa: F401 - re-exported
    LOCK_LEASE_S,
    LOCK_SUFFIX,
    RegistryError,
    _client,
    _code,
    _delete_lock,
    promotion_lock,
)
from common.registry_query import describe, location_uri, materialize  # noqa: F401 - re-exported

CHAMPION = "champion"
CHALLENGER = "challenger"
EVAL_STATUS_TAG = "eval.status"
EVAL_METRIC_PREFIX = "eval."
EVAL_SETTINGS_TAG = "eval.settings_digest"  # benchmarks + eval settings the eval.* numbers come from
_FLOAT_SLACK = 1e-9


@dataclass
class GateConfig:
    """When a candidate replaces the champion automatically."""

    metric: str = "accuracy"  # eval metric compared (as logged, e.g. "accuracy" or "temporal.accuracy")
    min_margin: float = 0.0  # candidate must beat the champion by more than this (absolute)
    higher_is_better: bool = True  # False for error-like metrics
    require_eval_success: bool = True  # a failed/partial evaluation never promotes


@dataclass
class GateDecision:
    promote: bool
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    champion_version: str | None
    min_margin: float


def decide(
    gate: GateConfig,
    candidate_value: float | None,
    eval_succeeded: bool,
    champion_value: float | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """The promotion gate as a pure function of the numbers it compares."""

    def out(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, gate.metric, candidate_value, champion_value,
                            champion_version, gate.min_margin)  # fmt: skip

    if gate.require_eval_success and not eval_succeeded:
        return out(False, "evaluation did not succeed")
    if candidate_value is None or not math.isfinite(candidate_value):
        return out(False, f"candidate has no finite value for metric {gate.metric!r}")
    if champion_version is None:
        return out(True, "no champion yet")
    if champion_value is None or not math.isfinite(champion_value):
        # Never compare against a number we do not have: a human decides (recorded as rejected).
        return out(False, f"champion v{champion_version} has no value for metric {gate.metric!r}")
    gain = candidate_value - champion_value if gate.higher_is_better else champion_value - candidate_value
    # Metrics are rounded decimals (0.52 - 0.50 = 0.020000000000000018): a gain equal to the
    # margin up to float noise is not "more than" it.
    if gain - gate.min_margin > _FLOAT_SLACK:
        return out(True, f"beats champion v{champion_version} by {gain:.4g} > margin {gate.min_margin:g}")
    return out(False, f"gain {gain:.4g} over champion v{champion_version} is not above margin {gate.min_margin:g}")



def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def register_version(
    name: str,
    source: str,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    alias: str | None = None,
) -> Any:
    """Register `source` as a new version of `name` (created if missing); returns ModelVersion.

    `source` is what `StageRun.log_checkpoint` returned: a `models:/` or `runs:/` URI goes through
    `mlflow.register_model`; an artifact-store or remote URI (reference) becomes the version source.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client()
    str_tags = {k: str(v) for k, v in (tags or {}).items()}
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    if source.startswith(("models:/", "runs:/")):
        mv = mlflow.register_model(source, name, tags=str_tags)
    else:
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=str_tags)
    if description:
        client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def version_by_alias(name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "INVALID_PARAMETER_VALUE" in str(exc.error_code):
            return None
        raise


def eval_metrics(mv: Any) -> dict[str, float]:
    """`eval.<metric>` tags of a version as numbers (status tag excluded)."""
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(EVAL_METRIC_PREFIX) and key not in (EVAL_STATUS_TAG, EVAL_SETTINGS_TAG):
            try:
                out[key[len(EVAL_METRIC_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def record_eval(name: str, version: str, metrics: dict[str, float], succeeded: bool,
                settings_digest: str | None = None) -> None:  # fmt: skip
    """Store an evaluation's outcome on a version (`eval.status`, `eval.<metric>`, and the digest
    of the benchmarks and settings it was measured with, `eval.settings_digest`)."""
    client = _client()
    client.set_model_version_tag(name, version, EVAL_STATUS_TAG, "succeeded" if succeeded else "failed")
    if settings_digest:
        client.set_model_version_tag(name, version, EVAL_SETTINGS_TAG, settings_digest)
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"{EVAL_METRIC_PREFIX}{key}", repr(float(value)))


def record_decision(name: str, version: str, entry: dict[str, Any]) -> None:
    """Record a promotion decision: the latest one as `promotion.*` tags on the version, and every
    one, never overwritten, as `decision.v<version>.<utc time>` (JSON) on the registered model."""
    client = _client()
    entry = {"time": _now(), **entry}
    for key in ("decision", "reason", "alias", "actor", "time"):
        if key in entry:
            client.set_model_version_tag(name, version, f"promotion.{key}", str(entry[key]))
    for key in ("metric", "candidate_value", "champion_value", "champion_version", "min_margin"):
        if entry.get(key) is not None:
            client.set_model_version_tag(name, version, f"promotion.{key}", str(entry[key]))
    client.set_registered_model_tag(name, f"decision.v{version}.{entry['time']}", json.dumps(entry, default=str))


def _move_alias(name: str, alias: str, new: Any, previous: Any | None, actor: str, why: str) -> None:
    """Point `alias` at `new`; the version that loses it gets a `demoted` decision (its old
    `promoted` tags would otherwise still say it is the champion), and `new` loses a stale
    `replaced_by` from an earlier demotion (a rollback brings an old version back)."""
    client = _client()
    client.set_registered_model_alias(name, alias, new.version)
    got = client.get_model_version_by_alias(name, alias)
    if str(got.version) != str(new.version):  # someone moved it outside the lock
        raise RegistryError(f"{name}@{alias} is v{got.version} right after moving it to v{new.version}")
    prefix = "promotion" if alias == CHAMPION else alias
    if f"{prefix}.replaced_by" in new.tags:
        client.delete_model_version_tag(name, new.version, f"{prefix}.replaced_by")
    if previous is not None and str(previous.version) != str(new.version):
        client.set_model_version_tag(name, previous.version, f"{prefix}.replaced_by", new.version)
        if alias == CHAMPION:
            record_decision(name, previous.version, {"decision": "demoted", "alias": alias, "actor": actor,
                                                     "reason": f"@{alias} moved to v{new.version}: {why}"})  # fmt: skip


# Sentinel: the caller did not say which champion its evaluation compared against (CLI gate).
UNKNOWN = object()


def _champion_reference(gate: GateConfig, champion: Any, evaluated: Any, champion_metrics: dict[str, float] | None,
                        settings_digest: str | None) -> tuple[float | None, str | None]:  # fmt: skip
    """(champion value to compare with, or None; the reason when there is none) for the champion
    read under the lock. Never a number the candidate was not compared with (issue 15.12, 15.14)."""
    if evaluated is UNKNOWN:  # CLI gate: the given numbers, else both sides' recorded evaluations
        if champion_metrics is not None:
            return champion_metrics.get(gate.metric), None
        if champion.tags.get(EVAL_STATUS_TAG) != "succeeded":
            return None, f"champion v{champion.version} has no successful recorded evaluation"
        return eval_metrics(champion).get(gate.metric), None
    if evaluated and str(evaluated) == str(champion.version):
        if champion_metrics is None:
            return None, (f"champion v{champion.version}'s evaluation failed in this run; its older recorded "
                          "score is not used (re-run, or promote by hand)")  # fmt: skip
        return champion_metrics.get(gate.metric), None
    # @champion moved while this run evaluated (or appeared: there was none at resolve time).
    was = f"v{evaluated}" if evaluated else "none"
    same = settings_digest and champion.tags.get(EVAL_SETTINGS_TAG) == settings_digest
    if champion.tags.get(EVAL_STATUS_TAG) == "succeeded" and same:
        return eval_metrics(champion).get(gate.metric), None
    return None, (f"@champion moved from {was} to v{champion.version} during this run and v{champion.version} "
                  "has no evaluation with the same benchmarks and settings; re-run the evaluation")  # fmt: skip


def gate_and_promote(
    name: str,
    version: str,
    gate: GateConfig,
    eval_succeeded: bool | None = None,
    candidate_metrics: dict[str, float] | None = None,
    champion_metrics: dict[str, float] | None = None,
    actor: str = "pipeline",
    evaluated_champion: Any = UNKNOWN,
    settings_digest: str | None = None,
) -> GateDecision:
    """Apply the gate to `version` and move `champion` to it when it passes.

    The pipeline passes the numbers of the eval that scored candidate and champion side by side,
    `evaluated_champion` (the version it evaluated, "" for none) and `champion_metrics` (None when
    that champion's evaluation failed). Under the promotion lock @champion is read afresh: if it
    is no longer the evaluated version, the candidate is compared with the new champion's
    recorded evaluation only when that used the same benchmarks and settings
    (`settings_digest`), else rejected. Without `evaluated_champion` (the CLI gate) both sides'
    recorded `eval.*` tags are compared. The decision is recorded either way, inside the lock.
    """
    client = _client()
    with promotion_lock(name, holder=f"{actor}:v{version}"):
        candidate = client.get_model_version(name, version)
        if eval_succeeded is None:
            eval_succeeded = candidate.tags.get(EVAL_STATUS_TAG) == "succeeded"
        cand = candidate_metrics if candidate_metrics is not None else eval_metrics(candidate)
        cand_value = cand.get(gate.metric)
        champion = version_by_alias(name, CHAMPION)
        if champion is not None and str(champion.version) == str(candidate.version):
            decision = GateDecision(False, "already champion", gate.metric, cand_value, None, champion.version,
                                    gate.min_margin)  # fmt: skip
        elif champion is None:
            decision = decide(gate, cand_value, eval_succeeded)
        else:
            champ_value, why_not = _champion_reference(gate, champion, evaluated_champion, champion_metrics,
                                                       settings_digest)  # fmt: skip
            decision = decide(gate, cand_value, eval_succeeded, champ_value, champion.version)
            if why_not and decision.reason.endswith(f"has no value for metric {gate.metric!r}"):
                decision.reason = why_not
        entry = asdict(decision)
        entry.pop("promote")
        if decision.promote:
            try:
                _move_alias(name, CHAMPION, candidate, champion, actor, f"gate ({decision.reason})")
            except Exception as exc:
                # The server may have applied the move and still answered an error (PostgreSQL's
                # UniqueViolation did): record what the registry now says, then re-raise.
                now = version_by_alias(name, CHAMPION)
                moved = now is not None and str(now.version) == str(candidate.version)
                record_decision(name, candidate.version, {
                    "decision": "promoted" if moved else "failed", "alias": CHAMPION, "actor": actor, **entry,
                    "reason": f"{decision.reason}; the alias move raised {type(exc).__name__}: {exc}"[:500]})  # fmt: skip
                raise
        record_decision(name, candidate.version, {"decision": "promoted" if decision.promote else "rejected",
                                                  "alias": CHAMPION, "actor": actor, **entry})  # fmt: skip
    return decision


def promote(name: str, version: str, alias: str = CHAMPION, actor: str = "cli", force: bool = False,
            reason: str = "manual") -> Any:  # fmt: skip
    """Point `alias` at `version` by hand. A version without a successful evaluation (failed, or
    never evaluated) is refused unless `force`; the move is recorded like the gate's decisions,
    and the version that loses @champion is marked demoted (a rollback leaves no stale tags)."""
    client = _client()
    mv = client.get_model_version(name, version)
    status = mv.tags.get(EVAL_STATUS_TAG)
    if status != "succeeded" and not force:
        what = "its evaluation failed" if status == "failed" else "it was never evaluated"
        raise RegistryError(f"{name} v{version}: {what}; pass --force to promote anyway")
    with promotion_lock(name, holder=f"{actor}:v{version}"):
        previous = version_by_alias(name, alias)
        mv = client.get_model_version(name, version)
        why = reason + (" (forced)" if force else "")
        _move_alias(name, alias, mv, previous, actor, f"by hand ({why})")
        record_decision(name, mv.version, {"decision": "promoted", "alias": alias, "actor": actor, "reason": why,
                                           "champion_version": previous.version if previous else None})  # fmt: skip
    return client.get_model_version(name, mv.version)
