"""Component plumbing: artifact references, overrides, knob -> config keys, the eval comparison
and the register/promote step (real MLflow server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import eval_launch, launch, train_launch
from components.launch import StepError


def test_refs_and_output_dirs(tmp_path):
    target = tmp_path / "pvc" / "model"
    target.mkdir(parents=True)
    art = tmp_path / "artifact"
    launch.write_ref(str(art), target, stage="sft")
    assert launch.resolve(str(art)) == target.resolve()
    assert launch.resolve(str(target)) == target  # a plain artifact is its own folder
    target.rmdir()
    with pytest.raises(StepError, match="does not exist"):
        launch.resolve(str(art))
    with pytest.raises(StepError, match="does not exist"):
        launch.resolve(str(tmp_path / "nope"))
    # No shared volume: the artifact is the folder. With one: runs_root/<parts>, artifact = ref.
    assert launch.output_dir(str(tmp_path / "a1"), "", "run-1", "sft") == tmp_path / "a1"
    out = launch.output_dir(str(tmp_path / "a2"), str(tmp_path / "runs"), "run-1", "sft")
    assert out == tmp_path / "runs" / "run-1" / "sft" and out.is_dir()
    assert launch.resolve(str(tmp_path / "a2")) == out.resolve()


def test_overrides_and_numbers():
    assert launch.overrides_list(["a=1", "b.c=x y"]) == ["a=1", "b.c=x y"]
    assert launch.overrides_list('["a=1"]') == ["a=1"] and launch.overrides_list("a=1 b=2") == ["a=1", "b=2"]
    assert launch.overrides_list(None) == [] and launch.overrides_list([]) == []
    with pytest.raises(StepError, match="key=value"):
        launch.overrides_list(["lr"])
    assert launch.numeric_items({"a": 1, "b": {"c": 2.5, "d": "x", "e": float("nan")}, "f": True}) == {"a": 1.0, "b.c": 2.5}


def test_metrics_jsonl_and_model_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n\nnot json\n{"step": 2, "loss": 1.5}\n')
    assert launch.read_jsonl_last(tmp_path / "metrics.jsonl") == {"step": 2, "loss": 1.5}
    assert launch.read_jsonl_last(tmp_path / "none.jsonl") == {}
    with pytest.raises(StepError, match="no model folder"):
        launch.model_folder(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert launch.model_folder(tmp_path) == tmp_path / "model"


def test_knobs_map_to_real_config_keys():
    from common.config import load_config
    from training.grpo.config import GRPOConfig
    from training.sft.config import SFTConfig

    sft = train_launch.knob_overrides("sft", {"frames": 8, "max_steps": 0, "lr": 2e-5})
    assert sft == ["video.num_frames=8", "lr=2.0e-05"]  # 0 keeps the config's value; YAML reads 2.0e-05 as a float
    entry = train_launch.ray_entrypoint("sft", ["train", "sft", "--model", "m", "--data", "d", "--out", "o", *sft], 16)
    cfg = load_config(SFTConfig, None, entry[9:])
    assert (cfg.video.num_frames, cfg.lr, cfg.num_workers, cfg.launcher, cfg.use_gpu) == (8, 2e-5, 16, "ray", True)
    cfg.check()
    grpo = train_launch.knob_overrides("grpo", {"frames": 16, "max_steps": 3, "lr": 1e-6, "group_size": 4, "kl_coef": 0.02})
    g = load_config(GRPOConfig, None, grpo)
    assert (g.video.sampling.num_frames, g.steps, g.optim.lr, g.rollout.group_size, g.algorithm.kl_coef) == (16, 3, 1e-6, 4, 0.02)
    with pytest.raises(StepError, match="no config key"):
        train_launch.knob_overrides("sft", {"group_size": 4})
    # Multi-process GRPO: the same `longrl train grpo` with its worker keys, plus parallel.* keys.
    entry = train_launch.ray_entrypoint("grpo", ["train", "grpo", "--model", "m", "--data", "d", "--out", "o",
                                                 *grpo, "parallel.sp_size=4"], 16)  # fmt: skip
    assert entry[:9] == ["longrl", "train", "grpo", "--model", "m", "--data", "d", "--out", "o"]
    g = load_config(GRPOConfig, None, entry[9:])
    assert (g.steps, g.rollout.group_size, g.parallel.sp_size) == (3, 4, 4)
    assert (g.num_workers, g.launcher, g.device, g.wants_gpu()) == (16, "ray", "cuda", True)
    g.check()


def _fake_eval(out: Path, bench: str, correct: list[bool | None]) -> None:
    """An eval output folder as `longrl eval` writes it (metrics computed by eval.metrics)."""
    from eval.metrics import compute_metrics

    preds = [{"qid": f"q{i}", "status": "error" if c is None else "answered", "correct": bool(c),
              "cluster": f"v{i // 2}"} for i, c in enumerate(correct)]  # fmt: skip
    d = out / bench
    d.mkdir(parents=True)
    (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (d / "metrics.json").write_text(json.dumps(compute_metrics(preds, n_boot=50)))


def test_comparison_and_report(tmp_path):
    _fake_eval(tmp_path / "candidate", "lvr", [True, True, True, False, True, False, True, True])
    _fake_eval(tmp_path / "base", "lvr", [False, True, False, False, True, False, False, True])
    _fake_eval(tmp_path / "champion", "lvr", [True, True, None, None, None, False, True, True])  # 3/8 errors, 4/5 right
    outs = {r: tmp_path / r for r in ("candidate", "base", "champion")}
    res = eval_launch.compare(outs, ["lvr"], max_error_rate=0.2)
    cand = res["roles"]["candidate"]
    assert cand["succeeded"] and cand["metrics"]["lvr/score"] == pytest.approx(6 / 8)
    assert not res["roles"]["champion"]["succeeded"] and "37.5%" in res["roles"]["champion"]["reason"]
    base_pair = res["paired"]["base"]["lvr"]
    assert (base_pair["wins"], base_pair["losses"], base_pair["difference"]) == (3, 0, pytest.approx(3 / 8))
    assert "champion" not in res["paired"]  # a failed eval is not compared with
    md = eval_launch.markdown(res)
    assert "| lvr | 75.0 | 37.5 | 80.0 | +37.5 (n=8, p=0.25) | n/a |" in md
    assert ("- champion: lvr: 8 questions, 5 graded, 0 ungraded (no judge), 0 judge errors, 3 errors"
            " - **did not succeed**") in md
    missing = eval_launch.compare({"candidate": tmp_path / "empty", "base": tmp_path / "base"}, ["lvr"], 0.05)
    assert not missing["roles"]["candidate"]["succeeded"] and missing["paired"] == {}
    argv = eval_launch.eval_argv(Path("m"), Path("d"), Path("o"), "lvr", 8, 5, ["max_pixels=100"])
    assert argv[3:] == ["eval", "--model", "m", "--benchmark", "lvr", "--data", "d", "--out", "o",
                        "--frames", "8", "--limit", "5", "--set", "max_pixels=100"]  # fmt: skip


def _comparison(tmp_path: Path, cand: list[bool], champ: list[bool] | None, name: str,
                champion_uri: str = "") -> Path:  # fmt: skip
    work = tmp_path / name
    _fake_eval(work / "candidate", "lvr", cand)
    _fake_eval(work / "base", "lvr", [False] * len(cand))
    outs = {"candidate": work / "candidate", "base": work / "base"}
    if champ is not None:
        _fake_eval(work / "champion", "lvr", champ)
        outs["champion"] = work / "champion"
    result = eval_launch.compare(outs, ["lvr"], 0.05)
    result.update(champion_uri=champion_uri, settings_digest=eval_launch.settings_digest(["lvr"], 4, 0, []))
    (work / "comparison.json").write_text(json.dumps(result))
    return work


def test_register_and_gate_on_mlflow(mlflow_env, tmp_path, tiny_model_dir):
    import os

    from common import registry, tracking
    from components.registry_launch import register_candidate

    data = tmp_path / "data"
    data.mkdir()
    (data / "eval.jsonl").write_text('{"id": "q1"}\n')
    parent = tracking.pipeline_run("kfp-42", experiment=os.environ["MLFLOW_EXPERIMENT_NAME"])
    name = f"m-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    args = dict(model_name=name, base_model="tiny", gate_metric="lvr/score", gate_min_margin=0.1, auto_promote=True,
                shared_volume="", kfp_run_id="kfp-42", tracking_uri=mlflow_env, parent_run_id=parent)  # fmt: skip
    first = _comparison(tmp_path, [True, False, True, False], None, "c1")
    v1, promoted, text = register_candidate(tiny_model_dir, first, data, **args)
    assert promoted and "no champion yet" in text
    mv = registry.version_by_alias(name, "champion")
    assert mv.version == v1 and mv.tags["pipeline.kfp_run_id"] == "kfp-42" and mv.tags["base_model"] == "tiny"
    assert mv.tags["data.digest"].startswith("sha256:") and mv.tags["eval.status"] == "succeeded"
    assert float(mv.tags["eval.lvr/score"]) == 0.5
    # Candidate 0.75 vs champion 0.5 measured in the same eval: +0.25 > 0.1 -> promoted.
    second = _comparison(tmp_path, [True, True, True, False], [True, False, True, False], "c2", f"models:/{name}/{v1}")
    v2, promoted, _ = register_candidate(tiny_model_dir, second, data, **args)
    assert promoted and registry.version_by_alias(name, "champion").version == v2
    # 0.75 vs 0.75: not above the margin -> stays @challenger only.
    third = _comparison(tmp_path, [True, True, True, False], [True, True, True, False], "c3", f"models:/{name}/{v2}")
    v3, promoted, text = register_candidate(tiny_model_dir, third, data, **args)
    assert not promoted and "not above margin" in text
    assert registry.version_by_alias(name, "challenger").version == v3
    assert registry.version_by_alias(name, "champion").version == v2
    # The champion as the eval step gets it: the same weights, downloaded from the registry.
    got = registry.materialize(f"models:/{name}@champion", tmp_path / "champ")
    assert (got / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    # The register run nests under the pipeline run and holds the checkpoint.
    from mlflow import MlflowClient

    run = MlflowClient().get_run(registry.version_by_alias(name, "challenger").run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["longrl.stage"] == "register"
    # auto_promote off: registered, not promoted, and the reason is on the version.
    v4, promoted, _ = register_candidate(tiny_model_dir, second, data, **{**args, "auto_promote": False})
    from mlflow import MlflowClient as _C

    assert not promoted and "auto_promote is off" in _C().get_model_version(name, v4).tags["promotion.reason"]
    # The pipeline's outputs (run-outcome) read back the newest version this run registered.
    from components.registry_launch import run_outcome

    got = run_outcome(name, "kfp-42", mlflow_env)
    assert got == {"registered_model": name, "registered_version": v4, "model_uri": f"models:/{name}/{v4}",
                   "promoted": False, "promotion": "rejected", "champion_version": v2,
                   "promotion_reason": "auto_promote is off (promote by hand: longrl registry promote)"}  # fmt: skip
    assert run_outcome(name, "kfp-other", mlflow_env)["promotion"] == "not-registered"
    assert run_outcome("no-such-model", "kfp-42", mlflow_env)["registered_version"] == ""
    assert run_outcome(name, "kfp-42", "")["promotion_reason"] == "MLflow is not configured (no tracking URI)"
    os.environ.pop("MLFLOW_RUN_ID", None)
    # No MLflow: nothing registered, said plainly.
    assert register_candidate(tiny_model_dir, third, data, **{**args, "tracking_uri": ""})[0] == ""


class _Artifact:
    """The two things a KFP output artifact offers a component: a path and metadata / metrics."""

    def __init__(self, path: Path) -> None:
        self.path, self.metadata, self.metrics = str(path), {}, {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value


def test_training_step_as_rayjob(scripted_server, tmp_path):
    """ray_workers > 0: the step submits the stage's own command as a RayJob on the shared volume
    and waits; the job (scripted here) writes OUT/model and metrics.jsonl on the volume."""
    from kubernetes import client

    mount = tmp_path / "mnt"
    model_in, data_in = mount / "models" / "base", mount / "data"
    model_in.mkdir(parents=True)
    data_in.mkdir()
    created = []

    def handler(req):
        if req.method == "POST":
            body = req.json()
            created.append(body)
            out = Path(body["spec"]["entrypoint"].split("--out ")[1].split()[0])
            (out / "model").mkdir(parents=True)
            (out / "model" / "config.json").write_text("{}")
            (out / "metrics.jsonl").write_text('{"step": 3, "loss": 0.5}\n')
            return 201, body
        return 200, {"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}

    server = scripted_server(handler)
    cfg = client.Configuration()
    cfg.host = server.url
    trained, metrics = _Artifact(tmp_path / "artifact"), _Artifact(tmp_path / "metrics")
    folder = train_launch.train_stage(
        "sft", model_in, data_in, trained, metrics, {"frames": 8, "max_steps": 3, "lr": 0.0},
        ["micro_batch_size=2"], runs_root=str(mount / "runs"), kfp_run_id="run-7",
        mlflow_tracking_uri="http://mlflow:5000", mlflow_parent_run_id="p1", ray_workers=2, gpus_per_worker=4,
        rayjob_config_json=json.dumps({"namespace": "longrl", "mount_path": str(mount)}),
        api_client=client.ApiClient(cfg))  # fmt: skip
    assert folder == mount / "runs" / "run-7" / "sft" / "model"
    assert launch.resolve(trained.path) == folder.resolve()  # the artifact is a reference
    assert metrics.metrics == {"sft/step": 3.0, "sft/loss": 0.5}
    spec = created[0]["spec"]
    assert spec["entrypoint"].startswith(f"longrl train sft --model {model_in} --data {data_in} --out {mount}/runs/run-7/sft")
    assert spec["entrypoint"].endswith("video.num_frames=8 max_steps=3 micro_batch_size=2 launcher=ray num_workers=8 use_gpu=true")
    assert spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["MLFLOW_RUN_ID"] == "p1"
    # Inputs off the shared volume cannot be seen by Ray pods: refused before any API call.
    with pytest.raises(StepError, match="not on the shared volume"):
        train_launch.train_stage("sft", tmp_path / "elsewhere", data_in, _Artifact(tmp_path / "a2"), metrics, {}, [],
                                 str(mount / "runs"), "run-8", "", "", ray_workers=1,
                                 rayjob_config_json=json.dumps({"mount_path": str(mount)}),
                                 api_client=client.ApiClient(cfg))  # fmt: skip
    assert len(created) == 1
