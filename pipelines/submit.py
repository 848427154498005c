"""Compile the pipeline and submit it to a Kubeflow Pipelines server through `kfp.Client`.

Submission = upload the package (a new pipeline, or a new version of the existing one), get or
create the experiment, start a run with the given parameters. The bearer token comes from the
environment (`KFP_TOKEN`) only: never an option (shell history), never printed, never in the
compiled YAML.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOKEN_ENV = "KFP_TOKEN"


class SubmitError(ValueError):
    pass


def compile_pipeline(out: str | Path, cluster: Any = None) -> Path:
    """Write the pipeline's KFP IR YAML to `out`."""
    from kfp import compiler

    from pipelines.long_video_reasoning import build_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cluster), str(out))
    return out


def _pipeline_doc(package: str | Path) -> dict[str, Any]:
    """The pipeline spec (first YAML document; the second, if any, is the platform spec)."""
    return next(iter(yaml.safe_load_all(Path(package).read_text())))


def pipeline_parameters(package: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> {"type", "default"} of the compiled pipeline's input parameters."""
    spec = _pipeline_doc(package)
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: {"type": p["parameterType"], "default": p.get("defaultValue")} for name, p in params.items()}


_PARSERS: dict[str, typing.Callable[[Any], bool]] = {
    "STRING": lambda v: isinstance(v, str),
    "NUMBER_INTEGER": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "NUMBER_DOUBLE": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


def parse_params(items: list[str], declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`k=v` strings -> typed values (YAML scalars/lists), checked against the declared types;
    an unknown name or a wrong type is an error naming the parameter. An old spelling
    (pipelines/param_aliases.py) is taken under its new name, with a deprecation note."""
    from pipelines.param_aliases import canonical_name

    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise SubmitError(f"--param {item!r} is not name=value")
        given, raw = item.split("=", 1)
        name = canonical_name(given, declared)
        if given_as.setdefault(name, given) != given:
            raise SubmitError(f"--param {given_as[name]} and --param {given} are the same parameter "
                              f"({given_as[name] if name == given else given} is deprecated); give {name} once")  # fmt: skip
        if name not in declared:
            raise SubmitError(f"unknown pipeline parameter {name!r}; known: {', '.join(sorted(declared))}")
        kind = declared[name]["type"]
        value: Any = raw if kind == "STRING" else yaml.safe_load(raw)
        if kind == "NUMBER_DOUBLE" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _PARSERS.get(kind, lambda v: True)(value):
            raise SubmitError(f"parameter {name}={raw!r} is not a {kind.lower().replace('number_', '')}")
        out[name] = value
    return out


@dataclass
class Submitted:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str
    url: str
    namespace: str | None = None
    state: str | None = None  # the final state with wait_s


def without_cache(package: str | Path, out: str | Path) -> Path:
    """A copy of `package` with caching off on every task (`submit --no-cache`). kfp.Client's
    enable_caching applies only to a package sent with the run, not to an uploaded version."""
    docs = list(yaml.safe_load_all(Path(package).read_text()))
    spec = docs[0]
    for dag in [spec["root"].get("dag", {})] + [c.get("dag", {}) for c in spec.get("components", {}).values()]:
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": False}
    Path(out).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return Path(out)


def _pipeline_id(client: Any, name: str, namespace: str | None) -> str | None:
    """The pipeline called `name` where uploads go: in multi-user mode the namespace's own
    pipelines (the 2.17 backend lists only shared ones without a namespace, so a resubmit found
    nothing and the upload got 409); on a standalone server, all."""
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=flt, namespace=namespace).pipelines or []
    if len(found) > 1:
        raise SubmitError(f"{len(found)} pipelines are called {name!r}" + (f" in {namespace}" if namespace else ""))
    return found[0].pipeline_id if found else None


def server_namespace(client: Any, namespace: str | None) -> str | None:
    """The namespace to use on this server: a multi-user server needs the user's Profile
    namespace (runs, pipelines and experiments live there); a standalone one has none (its runs
    execute in the namespace KFP is installed in, usually `kubeflow`) and a given one is ignored."""
    multi_user = bool(getattr(client.get_kfp_healthz(), "multi_user", False))
    if multi_user and not namespace:
        raise SubmitError("this Kubeflow Pipelines server is multi-user: pass --namespace <your profile "
                          "namespace> (where longrl's volume and secrets are installed, docs/pipeline.md)")  # fmt: skip
    return namespace if multi_user else None


def submit(host: str, package: str | Path, params: dict[str, Any], experiment: str = "longrl",
           namespace: str | None = None, run_name: str | None = None, service_account: str | None = None,
           pipeline_name: str | None = None, no_cache: bool = False, wait_s: float = 0,
           client: Any = None) -> Submitted:  # fmt: skip
    """Upload `package` and start a run. The token is read from $KFP_TOKEN when set. With
    `wait_s` > 0 wait for the run to end (Submitted.state: SUCCEEDED, FAILED, ...)."""
    import tempfile

    import kfp

    from common.secrets import register_secret

    token = os.environ.get(TOKEN_ENV) or None
    if token:
        register_secret(token)  # redacted from anything we log
    package = Path(package)
    name = pipeline_name or _pipeline_doc(package)["pipelineInfo"]["name"]
    client = client or kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
    ns = server_namespace(client, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        if no_cache:
            package = without_cache(package, Path(tmp) / package.name)
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
        pipeline_id = _pipeline_id(client, name, ns)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=name, namespace=ns)
            pipeline_id = pipeline.pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
            if not versions.pipeline_versions:
                raise SubmitError(f"pipeline {name} ({pipeline_id}) was uploaded but has no version")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(
                str(package), pipeline_version_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{digest}",
                pipeline_id=pipeline_id)  # fmt: skip
            version_id = version.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=ns)
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or f"{name}-{digest}",
                              params=params, pipeline_id=pipeline_id, version_id=version_id,
                              service_account=service_account)  # fmt: skip
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    state = None
    if wait_s > 0:
        final = client.wait_for_run_completion(run.run_id, timeout=int(wait_s), sleep_duration=5)
        state = str(final.state)
    return Submitted(pipeline_id, version_id, exp.experiment_id, run.run_id, url, ns, state)
