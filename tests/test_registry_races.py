"""The promotion gate under a moving champion, concurrent promotions, failed champion evaluations,
manual promotion and rollback (issue 15 findings 12, 13, 14), on a real MLflow server."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from common import registry
from common.registry import GateConfig

SETTINGS = "sha256:settings-a"
GATE = GateConfig(metric="lvr/score", min_margin=0.01)


def new_version(name: str, tmp_path, score: float | None, settings: str = SETTINGS) -> str:
    """A registered version with a recorded evaluation (None: none). Its source is a reference
    (the gate never reads weights): one call instead of a logged run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists
    mv = client.create_model_version(name, source=f"s3://checkpoints/{name}/{time.monotonic_ns()}")
    if score is not None:
        registry.record_eval(name, mv.version, {"lvr/score": score}, succeeded=True, settings_digest=settings)
    return mv.version


def _tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, version).tags


def _history(name: str, version: str) -> list[dict]:
    from mlflow import MlflowClient

    tags = MlflowClient().get_registered_model(name).tags
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(f"decision.v{version}.")]


def _name() -> str:
    return f"lvr-{os.environ['MLFLOW_EXPERIMENT_NAME']}"


def test_champion_moved_mid_run_is_compared_with_the_new_champion(mlflow_env, tmp_path):
    """Finding 12: the run evaluated candidate 0.60 against champion v1 (0.50); meanwhile v2
    (0.90) became champion. The old code promoted 0.60 "beating v2 by 0.1"."""
    name = _name()
    v1 = new_version(name, tmp_path, 0.50)
    assert registry.gate_and_promote(name, v1, GATE, evaluated_champion="").promote
    cand = new_version(name, tmp_path, 0.60)
    v2 = new_version(name, tmp_path, 0.90)
    assert registry.gate_and_promote(name, v2, GATE, evaluated_champion=v1, champion_metrics={"lvr/score": 0.5},
                                     settings_digest=SETTINGS).promote  # fmt: skip
    d = registry.gate_and_promote(name, cand, GATE, candidate_metrics={"lvr/score": 0.60},
                                  champion_metrics={"lvr/score": 0.50}, evaluated_champion=v1,
                                  settings_digest=SETTINGS)  # fmt: skip
    assert not d.promote and d.champion_version == v2 and d.champion_value == 0.90
    assert registry.version_by_alias(name, "champion").version == v2
    # The new champion was measured with other settings: no comparison, rejected with the reason.
    v3 = new_version(name, tmp_path, 0.95, settings="sha256:other")
    registry.promote(name, v3, reason="other benchmark set")
    d = registry.gate_and_promote(name, cand, GATE, candidate_metrics={"lvr/score": 0.99},
                                  champion_metrics={"lvr/score": 0.50}, evaluated_champion=v1,
                                  settings_digest=SETTINGS)  # fmt: skip
    assert not d.promote and f"moved from v{v1} to v{v3}" in d.reason and "re-run the evaluation" in d.reason


def _race(name: str, tmp_path, monkeypatch) -> tuple[str, str, str]:
    """Two pipeline runs that both evaluated against champion v1 (0.50) promote at once: 0.60
    and 0.90. The reads of @champion are slowed so that, without a lock, both read v1 and the
    worse one writes last (what happened in 1 of 6 trials on the cluster)."""
    v1 = new_version(name, tmp_path, 0.50)
    registry.promote(name, v1, reason="initial")
    bad, good = new_version(name, tmp_path, 0.60), new_version(name, tmp_path, 0.90)
    read = registry.version_by_alias
    delays = {"bad": 0.6, "good": 0.1}

    def slow_read(n, alias):
        mv = read(n, alias)
        time.sleep(delays.get(threading.current_thread().name, 0))
        return mv

    monkeypatch.setattr(registry, "version_by_alias", slow_read)
    errors: list[BaseException] = []

    def promote(version: str, score: float) -> None:
        try:
            registry.gate_and_promote(name, version, GATE, candidate_metrics={"lvr/score": score},
                                      champion_metrics={"lvr/score": 0.50}, evaluated_champion=v1,
                                      settings_digest=SETTINGS)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(bad, 0.60), name="bad"),
               threading.Thread(target=promote, args=(good, 0.90), name="good")]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.setattr(registry, "version_by_alias", read)
    assert errors == []
    return v1, bad, good


@pytest.mark.parametrize("trial", range(2))
def test_concurrent_promotions_leave_the_better_champion(mlflow_env, tmp_path, monkeypatch, trial):
    """Finding 13: promotions are serialised by the registry lock and re-read @champion inside
    it, so the better candidate is champion whatever the order, and both decisions are recorded."""
    name = f"{_name()}-{trial}"
    v1, bad, good = _race(name, tmp_path, monkeypatch)
    assert registry.version_by_alias(name, "champion").version == good
    assert [h["decision"] for h in _history(name, good)] == ["promoted"]
    bad_decisions = [h["decision"] for h in _history(name, bad)]
    # Either bad went first (promoted over v1, then demoted by good) or after good (rejected).
    assert bad_decisions in (["rejected"], ["promoted", "demoted"]), bad_decisions
    from mlflow import MlflowClient

    names = {m.name for m in MlflowClient().search_registered_models()}
    assert name + registry.LOCK_SUFFIX not in names  # released
    assert all(r["name"] == name for r in registry.describe(name))


def test_a_stale_lock_is_removed_and_a_held_one_waits(mlflow_env, tmp_path):
    from mlflow import MlflowClient

    name = _name()
    v1 = new_version(name, tmp_path, 0.5)
    client = MlflowClient()
    client.create_registered_model(name + registry.LOCK_SUFFIX, tags={"holder": "dead-pod", "expires": "1"})
    registry.promote(name, v1)  # the lease ran out: removed, then promoted
    assert registry.version_by_alias(name, "champion").version == v1
    client.create_registered_model(name + registry.LOCK_SUFFIX,
                                   tags={"holder": "busy-pod", "expires": f"{time.time() + 60}"})  # fmt: skip
    with pytest.raises(registry.RegistryError, match="busy-pod"), registry.promotion_lock(name, "me", wait_s=0.5):
        pass
    client.delete_registered_model(name + registry.LOCK_SUFFIX)


def test_failed_champion_evaluation_is_not_replaced_by_its_old_score(mlflow_env, tmp_path):
    """Finding 14: the champion's evaluation failed in this run -> no comparison with its stored
    0.50 (the old code silently used it and promoted)."""
    name = _name()
    v1 = new_version(name, tmp_path, 0.50)
    registry.promote(name, v1)
    cand = new_version(name, tmp_path, 0.70)
    d = registry.gate_and_promote(name, cand, GATE, candidate_metrics={"lvr/score": 0.70}, champion_metrics=None,
                                  evaluated_champion=v1, settings_digest=SETTINGS)  # fmt: skip
    assert not d.promote and "evaluation failed in this run" in d.reason
    assert _tags(name, cand)["promotion.decision"] == "rejected"


def test_manual_promotion_needs_an_evaluation_and_rollback_leaves_no_stale_tags(mlflow_env, tmp_path):
    name = _name()
    v1 = new_version(name, tmp_path, 0.50)
    never = new_version(name, tmp_path, None)
    with pytest.raises(registry.RegistryError, match="never evaluated"):
        registry.promote(name, never)
    assert registry.version_by_alias(name, "champion") is None
    registry.promote(name, v1)
    v2 = new_version(name, tmp_path, 0.80)
    assert registry.gate_and_promote(name, v2, GATE, evaluated_champion=v1, champion_metrics={"lvr/score": 0.5},
                                     settings_digest=SETTINGS).promote  # fmt: skip
    assert _tags(name, v1)["promotion.replaced_by"] == v2 and _tags(name, v1)["promotion.decision"] == "demoted"
    # Rollback to v1: v2 no longer says "promoted", v1 no longer says "replaced by v2".
    registry.promote(name, v1, reason="rollback: v2 regressed in production")
    t1, t2 = _tags(name, v1), _tags(name, v2)
    assert registry.version_by_alias(name, "champion").version == v1
    assert "promotion.replaced_by" not in t1 and t1["promotion.decision"] == "promoted"
    assert t2["promotion.decision"] == "demoted" and t2["promotion.replaced_by"] == v1
    assert "rollback" in t2["promotion.reason"]
    rows = {r["version"]: r for r in registry.describe(name)}
    assert rows[v1]["aliases"] == ["champion"] and rows[v2]["decision"] == "demoted"
    registry.promote(name, never, force=True, reason="hotfix")  # --force still works
    assert _tags(name, never)["promotion.reason"] == "hotfix (forced)"


def test_an_alias_move_that_errors_is_still_recorded(mlflow_env, tmp_path, monkeypatch):
    """Finding 13 (PostgreSQL): the server moved the alias but answered an error; the decision
    must say what the registry holds, not be lost."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = _name()
    cand = new_version(name, tmp_path, 0.7)
    real = MlflowClient.set_registered_model_alias

    def applied_then_error(self, n, alias, version):
        real(self, n, alias, version)
        raise MlflowException("duplicate key value violates unique constraint", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", applied_then_error)
    with pytest.raises(MlflowException):
        registry.gate_and_promote(name, cand, GATE, evaluated_champion="", settings_digest=SETTINGS)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert registry.version_by_alias(name, "champion").version == cand
    assert _tags(name, cand)["promotion.decision"] == "promoted"
    assert "alias move raised MlflowException" in _tags(name, cand)["promotion.reason"]
    assert name + registry.LOCK_SUFFIX not in {m.name for m in MlflowClient().search_registered_models()}
