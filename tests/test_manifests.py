"""manifests/: every object (kustomize-rendered overlays, templates, secret templates) validates
against Kubernetes' schemas (KubeRay kinds against manifests/schemas), meets our pod policy,
and passes checkov with zero failures and a reason for every skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.k8s_schemas import validate_k8s
from tests.fixtures.pod_security import restricted_violations

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = ["base", "gpu", "overlays/dev", "overlays/gpu-cluster", "overlays/kfp-standalone", "overlays/kfp-multi-user",
                  "overlays/gpu-cluster-external-s3"]  # fmt: skip
CHECKOV_VERSION = "3.3.30"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "RayCluster", "RayJob"}
KUBECTL = shutil.which("kubectl")
# kubectl ships with this project's machine image; in CI its absence must fail, not skip, or the
# manifests would go unvalidated without anyone noticing.
KUBECTL_REQUIRED = bool(os.environ.get("CI"))
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None and not KUBECTL_REQUIRED, reason="kubectl (kustomize renderer) not installed"
)


def render(kustomization: str) -> str:
    return subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / kustomization)], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def raw_files() -> list[Path]:
    return sorted((MANIFESTS / "templates").glob("*.yaml")) + sorted(
        (MANIFESTS / "secrets").glob("*.yaml")
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if KUBECTL is None:
        if KUBECTL_REQUIRED:
            pytest.fail("kubectl (kustomize renderer) is required in CI and was not found")
        pytest.skip("kubectl (kustomize renderer) not installed")
    out = {k: [d for d in yaml.safe_load_all(render(k)) if d] for k in KUSTOMIZATIONS}
    for path in raw_files():
        out[str(path.relative_to(MANIFESTS))] = [
            d for d in yaml.safe_load_all(path.read_text()) if d
        ]
    return out


def pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]["spec"]]
    cluster = spec.get("rayClusterSpec", spec) if obj["kind"] in ("RayJob", "RayCluster") else None
    if cluster is None:
        return []
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]


def test_every_object_validates_against_its_schema(rendered):
    kinds = set()
    for source, docs in rendered.items():
        assert docs, source
        for obj in docs:
            try:
                validate_k8s(obj)
            except Exception as exc:
                raise AssertionError(
                    f"{source}: {obj['kind']}/{obj['metadata']['name']}: {exc}"
                ) from exc
            kinds.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Job", "Service", "PersistentVolumeClaim", "Role", "RoleBinding",
            "ServiceAccount", "NetworkPolicy", "Namespace", "Secret", "RayCluster", "RayJob"} <= kinds  # fmt: skip


def test_a_broken_object_is_caught():
    obj = yaml.safe_load((MANIFESTS / "base/storage/pvc-data.yaml").read_text())
    obj["spec"]["accesModes"] = ["ReadWriteMany"]  # typo: unknown field in strict mode
    with pytest.raises(Exception, match="accesModes"):
        validate_k8s(obj)


def test_pod_policy_non_root_resources_gpu_placement(rendered):
    seen = 0
    for source, docs in rendered.items():
        for obj in docs:
            if obj["kind"] not in WORKLOAD_KINDS:
                continue
            where = f"{source}: {obj['kind']}/{obj['metadata']['name']}"
            for pod in pod_specs(obj):
                seen += 1
                # The namespace enforces Pod Security `restricted` (base/namespace.yaml): a pod it
                # rejects never starts (the minio-setup Job included).
                assert restricted_violations(pod) == [], where
                assert pod["securityContext"]["runAsNonRoot"] is True, where
                assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
                assert pod.get("automountServiceAccountToken") is False, where
                for c in pod["containers"]:
                    sc, res = c["securityContext"], c["resources"]
                    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"][
                        "drop"
                    ] == ["ALL"], where
                    assert sc["readOnlyRootFilesystem"] is True, where
                    for kind in ("requests", "limits"):
                        assert {"cpu", "memory"} <= set(res[kind]), f"{where}: {kind}"
                    if "nvidia.com/gpu" in res["limits"]:
                        # placement by the GPU resource + toleration; a node label selector (GFD's
                        # gpu.present/gpu.product) is optional: the gpu-cluster overlay adds one
                        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
                        assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory"
                                   for v in pod["volumes"]), where  # fmt: skip
    assert seen >= 10


def test_rbac_is_namespaced_and_without_wildcards(rendered):
    for source, docs in rendered.items():
        for obj in docs:
            assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"), source
            if obj["kind"] == "Role":
                for rule in obj["rules"]:
                    assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], source
                    assert "secrets" not in rule["resources"], source


def test_secret_templates_hold_placeholders_only(rendered):
    secrets = [o for docs in rendered.values() for o in docs if o["kind"] == "Secret"]
    assert len(secrets) == 6
    for s in secrets:
        assert set(s["stringData"].values()) == {"REPLACE_ME"} and "data" not in s, s["metadata"][
            "name"
        ]
    for k in KUSTOMIZATIONS:  # real secrets are never rendered by a kustomization
        assert not [o for o in rendered[k] if o["kind"] == "Secret"], k


def secrets_read_by(obj: dict) -> set[str]:
    """Names of the Secrets any container (or volume) of `obj`'s pods reads."""
    out: set[str] = set()
    for pod in pod_specs(obj):
        for c in pod.get("initContainers", []) + pod["containers"]:
            out |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
            out |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        out |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return out


ROOT_KEY_READERS = {"StatefulSet/minio", "Job/minio-setup"}


def test_s3_root_keys_reach_only_minio_and_its_setup_job(rendered):
    """Issue 15.17: the MLflow server reads a bucket-scoped user's keys, never MinIO's root keys;
    with external S3 no pod reads root keys and no MinIO object is rendered."""
    for source in KUSTOMIZATIONS + [str(p.relative_to(MANIFESTS)) for p in raw_files()]:
        readers = {f"{o['kind']}/{o['metadata']['name']}": secrets_read_by(o) for o in rendered[source]
                   if o["kind"] in WORKLOAD_KINDS}  # fmt: skip
        root = {name for name, secrets in readers.items() if "longrl-minio-root" in secrets}
        assert root <= ROOT_KEY_READERS, (source, root)
        if "Deployment/mlflow" in readers:
            assert readers["Deployment/mlflow"] == {
                "longrl-mlflow-db",
                "longrl-mlflow-auth",
                "longrl-mlflow-s3",
            }, source
        if source in ("base", "overlays/dev", "overlays/gpu-cluster"):
            assert root == ROOT_KEY_READERS, source
            assert "longrl-mlflow-s3" in readers["Job/minio-setup"], (
                source
            )  # it registers that user
        if source.endswith("external-s3"):
            assert root == set(), source
            assert not [o for o in rendered[source] if "minio" in o["metadata"]["name"]], source
            env = {e["name"]: e.get("value") for e in mlflow_container(rendered[source])["env"]}
            assert "MLFLOW_S3_ENDPOINT_URL" not in env and env[
                "MLFLOW_ARTIFACTS_DESTINATION"
            ].startswith("s3://")
    # And a root-key reference in the MLflow pod would be caught:
    bad = yaml.safe_load((MANIFESTS / "base/mlflow/minio.yaml").read_text().split("---")[1])
    bad["kind"], bad["metadata"]["name"] = "Deployment", "mlflow"
    assert "longrl-minio-root" in secrets_read_by(bad)


def test_presigned_artifact_urls_resolve_and_are_admitted_from_run_namespaces(rendered):
    """MLflow 3 clients fetch artifacts through URLs the server presigns for its S3 endpoint
    (tests/test_mlflow_stack.py checks the prefix): with `http://minio:9000` a pipeline pod in
    `kubeflow` or a Profile namespace could neither resolve nor reach MinIO."""
    docs = rendered["base"]
    env = {e["name"]: e.get("value") for e in mlflow_container(docs)["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.longrl.svc.cluster.local:9000"
    services = {o["metadata"]["name"]: o for o in docs if o["kind"] == "Service"}
    assert (
        services["minio"]["metadata"]["namespace"] == "longrl"
        and services["minio"]["spec"]["ports"][0]["port"] == 9000
    )
    policy = next(
        o for o in docs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "minio"
    )
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"longrl.io/mlflow-client": "true"}}} in sources
    assert {"podSelector": {"matchLabels": {"job-name": "minio-setup"}}} in sources


def mlflow_container(docs: list[dict]) -> dict:
    deploy = next(
        o for o in docs if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"
    )
    return deploy["spec"]["template"]["spec"]["containers"][0]


def test_mlflow_s3_policy_allows_its_bucket_only(rendered):
    """The policy document the minio-setup Job installs: Allow only, no wildcard action or
    resource, exactly the bucket MLflow writes to (and the Job creates) and its objects."""
    docs = rendered["base"]
    policy_map = next(
        o
        for o in docs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "minio-mlflow-policy"
    )
    policy = json.loads(policy_map["data"]["mlflow-artifacts.json"])
    env = {e["name"]: e.get("value") for e in mlflow_container(docs)["env"]}
    bucket = env["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    job = next(o for o in docs if o["kind"] == "Job" and o["metadata"]["name"] == "minio-setup")
    mc = job["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in mc["env"]}["BUCKET"] == bucket == "mlflow-artifacts"
    assert "/policy/mlflow-artifacts.json" in mc["args"][0]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "minio-mlflow-policy"
    grants = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and set(st) <= {"Sid", "Effect", "Action", "Resource"}, st
        for res in st["Resource"]:
            grants.setdefault(res, set()).update(st["Action"])
    assert grants == {f"arn:aws:s3:::{bucket}": {"s3:ListBucket", "s3:GetBucketLocation"},
                      f"arn:aws:s3:::{bucket}/*": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                                   "s3:AbortMultipartUpload"}}  # fmt: skip


def test_ray_manifests_match_the_launcher():
    from components.kuberay import template_manifests

    for rel, text in template_manifests().items():
        assert (MANIFESTS / rel).read_text() == text, (
            f"{rel} drifted: run `python -m components.kuberay`"
        )


def checkov_bin() -> Path:
    """checkov in its own venv (.tmp/tools/checkov, as `make test` creates it); created here when
    missing. Its pins clash with kfp's, so it never enters the project venv."""
    venv = ROOT / ".tmp" / "tools" / "checkov"
    exe = venv / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV_VERSION}"], check=True,
                       timeout=900)  # fmt: skip
    return exe


@needs_kubectl
def test_checkov_zero_failures_every_skip_explained(tmp_path):
    files = []
    for k in KUSTOMIZATIONS[2:]:  # the overlays contain every base and gpu object
        path = tmp_path / (k.replace("/", "_") + ".yaml")
        path.write_text(render(k))
        files.append(path)
    files += raw_files() + sorted((ROOT / "docker").glob("Dockerfile.*"))
    args = [
        str(checkov_bin()),
        "--framework",
        "kubernetes",
        "dockerfile",
        "--skip-download",
        "-o",
        "json",
    ]
    for f in files:
        args += ["-f", str(f)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    data = json.loads(proc.stdout)
    reports = data if isinstance(data, list) else [data]
    failed, skipped, passed = [], [], 0
    for rep in reports:
        assert rep["summary"]["parsing_errors"] == 0
        passed += rep["summary"]["passed"]
        failed += [
            f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for c in rep["results"]["failed_checks"]
        ]
        skipped += rep["results"]["skipped_checks"]
    assert failed == [], "checkov failures:\n" + "\n".join(failed)
    assert passed > 300
    scanned = {
        Path(c["file_path"]).name for rep in reports for c in rep["results"]["passed_checks"]
    }
    # checkov has no policies for KubeRay kinds: their pods are held to test_pod_policy above.
    assert {
        "overlays_dev.yaml",
        "overlays_gpu-cluster.yaml",
        "overlays_gpu-cluster-external-s3.yaml",
        "minio-root.yaml",
        "mlflow-s3.yaml",
        "Dockerfile.cpu",
        "Dockerfile.gpu",
    } <= scanned
    unexplained = [
        c["check_id"] for c in skipped if len(c["check_result"].get("suppress_comment", "")) < 20
    ]
    assert unexplained == []
    # The only skips are the two documented ones (image digests, env-var secrets).
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_43", "CKV_K8S_35"}


def test_dockerfiles_match_the_project():
    import re

    from components.images import CPU_IMAGE, GPU_IMAGE

    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([0-9.]+)"', pyproject).group(1)
    for name, image in (("Dockerfile.cpu", CPU_IMAGE), ("Dockerfile.gpu", GPU_IMAGE)):
        text = (ROOT / "docker" / name).read_text()
        assert f"torch=={torch_pin}" in text, name  # the same torch as the project pins
        assert "USER 10001" in text, name  # the uid the manifests run as
        assert f"-t {image} ." in text, name  # the build command documents the default image name
        assert not re.search(r"pip install[^\n]*torchvision", text), name
    assert '".[gpu]"' in (ROOT / "docker" / "Dockerfile.gpu").read_text()
