"""`longrl pipeline compile|submit|run-local`: the Kubeflow pipeline from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipelines.cli_common import CONFIG_HELP, console, fail, resolve_config

app = typer.Typer(help="Compile the long-video-reasoning Kubeflow pipeline, submit it to a KFP server, "
                       "or run it locally with kfp.local.", no_args_is_help=True)  # fmt: skip

# Environment variables whose values must never appear in a compiled pipeline.
SECRET_ENVS = ("KFP_TOKEN", "OPENAI_API_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")  # fmt: skip


def check_no_secrets(path: Path) -> None:
    """Refuse a compiled file that contains the value of any secret environment variable."""
    text = path.read_text()
    leaked = [name for name in SECRET_ENVS if len(os.environ.get(name, "")) >= 4 and os.environ[name] in text]
    if leaked:
        path.unlink()
        fail(f"the compiled pipeline contained the value of {', '.join(leaked)}; not written")


def _compile(out: Path, cluster_config: Path | None, overrides: list[str] | None) -> Path:
    from pipelines.cluster import ClusterConfig
    from pipelines.submit import compile_pipeline

    cfg = resolve_config(ClusterConfig, cluster_config, overrides)
    path = compile_pipeline(out, cfg)
    check_no_secrets(path)
    return path


@app.command("compile")
def compile_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the pipeline (KFP IR YAML)."),
    cluster_config: Path = typer.Option(None, "--cluster-config", help=CONFIG_HELP + " See pipelines.cluster.ClusterConfig."),
    overrides: list[str] = typer.Argument(None, help="Cluster overrides key=value, e.g. train_gpus=4 pvc_name=my-pvc."),
) -> None:
    """Compile the long-video-reasoning pipeline to KFP IR YAML with the cluster's GPU, node,
    volume and secret settings. Set LONGRL_IMAGE / LONGRL_GPU_IMAGE to use your own images."""
    path = _compile(out, cluster_config, overrides)
    console.print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


@app.command()
def submit(
    host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline."),
    namespace: str = typer.Option(None, "--namespace", help="Profile namespace of a multi-user KFP (required there; "
                                  "ignored by a standalone KFP, whose runs execute in its own namespace)."),
    experiment: str = typer.Option("longrl", "--experiment", help="KFP experiment (created if missing)."),
    param: list[str] = typer.Option(None, "--param", help="Pipeline parameter name=value (repeatable)."),
    run_name: str = typer.Option(None, "--run-name", help="Name of the run (default: pipeline name + package hash)."),
    service_account: str = typer.Option(None, "--service-account", help="Run the pods as this ServiceAccount instead of the run's own (which KFP gives what its pods need; manifests/run-namespace adds the RayJob rules to it)."),
    package: Path = typer.Option(None, "--package", help="A compiled pipeline YAML (default: compile now)."),
    cluster_config: Path = typer.Option(None, "--cluster-config", help=CONFIG_HELP + " Used when compiling."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every step afresh (caching off in the uploaded version)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run to end; the exit code follows it (0: succeeded)."),
    wait_timeout: int = typer.Option(8 * 24 * 3600, "--wait-timeout", help="Seconds --wait waits at most."),
) -> None:
    """Upload the pipeline (new version if it exists), get or create the experiment and start a
    run with --param values. The bearer token is read from $KFP_TOKEN (never an option). Pods
    run as the run's normal ServiceAccount unless --service-account is given."""
    import tempfile

    from common.secrets import redact
    from pipelines.submit import SubmitError, parse_params, pipeline_parameters
    from pipelines.submit import submit as do_submit

    with tempfile.TemporaryDirectory() as tmp:
        pkg = package or _compile(Path(tmp) / "long-video-reasoning.yaml", cluster_config, None)
        try:
            params = parse_params(param or [], pipeline_parameters(pkg))
            done = do_submit(host, pkg, params, experiment=experiment, namespace=namespace, run_name=run_name,
                             service_account=service_account, no_cache=no_cache,
                             wait_s=wait_timeout if wait else 0)  # fmt: skip
        except SubmitError as exc:
            fail(str(exc), 2)
        except TimeoutError:
            fail(f"the run did not end within {wait_timeout} s (--wait-timeout); it goes on on the server")
        except Exception as exc:  # the KFP client's errors carry the server's answer
            fail(redact(f"submission failed: {type(exc).__name__}: {exc}"))
    where = f", namespace {done.namespace}" if done.namespace else ""
    console.print(f"run {done.run_id} started (pipeline {done.pipeline_id}, version {done.version_id}, "
                  f"experiment {done.experiment_id}{where})\n{done.url}")  # fmt: skip
    if wait:
        console.print(f"run {done.run_id} ended {done.state}")
        raise typer.Exit(0 if done.state == "SUCCEEDED" else 1)


@app.command("run-local")
def run_local(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything the run writes (MLflow store, artifacts, logs)."),
    param: list[str] = typer.Option(None, "--param", help="Pipeline parameter name=value (repeatable), over the demo defaults."),
    keep_server: bool = typer.Option(False, help="Leave the local MLflow server running at the end."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="Log to this existing MLflow server instead of "
                                     "starting one (credentials from MLFLOW_TRACKING_USERNAME/PASSWORD)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every task's full output (kfp.local's log) "
                                 "on the console too; by default it goes to OUT/pipeline.log and OUT/logs/TASK.log."),
    arch: str = typer.Option(None, "--arch", help="Model family of the demo's tiny model (qwen2_5_vl, the default; "
                             "qwen2_vl, qwen3_vl, qwen3_vl_moe): short for --param base_model=<demo model>:ARCH."),
) -> None:
    """Run the whole pipeline on this machine with kfp.local (subprocess runner), a local MLflow
    server and a tiny random Qwen2.5-VL on synthetic videos; prints the MLflow UI command, the
    registered model version and the evaluation table at the end. The console shows one line per
    task; a failed task's last log lines and its log file; -v shows everything."""
    from pipelines.run_local import run_local as do_run

    params = list(param or [])
    if arch:
        params.insert(0, f"base_model={demo_model_of_arch(arch, params)}")
    code = do_run(out, params, keep_server=keep_server, tracking_uri=tracking_uri, verbose=verbose)
    raise typer.Exit(code)


def demo_model_of_arch(arch: str, params: list[str]) -> str:
    """`--arch A`: the demo's tiny model (its preset and seed) in family A, checked now so a typo
    is one line before anything starts; refused beside an explicit base_model."""
    from components.launch import StepError, tiny_model_spec
    from pipelines.run_local import DEMO_PARAMS

    if any(p.split("=", 1)[0].strip() == "base_model" for p in params):
        fail("--arch: give --arch or --param base_model=..., not both", 2)
    base = str(DEMO_PARAMS["base_model"])
    model = ":".join([*base.split(":")[:2], arch]) if ":" in base else f"{base}:0:{arch}"
    try:
        tiny_model_spec(model)
    except StepError as err:
        fail(f"--arch {arch}: {err}", 2)
    return model
