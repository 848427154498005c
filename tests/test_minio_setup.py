"""The minio-setup Job's script (manifests/base/mlflow/minio-setup.yaml), run by `sh` exactly as
the manifest gives it, against a stand-in `mc` that keeps MinIO's admin state in a file (issue
15.17). No MinIO server or `mc` binary can be installed here (neither is on PyPI or Debian), so
the stand-in follows MinIO's documented semantics: `mc admin user add` and `mc admin policy
create` are upserts, `mc mb --ignore-existing` tolerates the bucket, and `mc admin policy attach`
of an attached policy succeeds from mc 2024-10 (mc#5058) and fails with "already in effect"
before. What this checks is the script: it re-runs cleanly, rotates the scoped user's secret,
installs exactly the shipped policy, and prints no key. The policy's effect is tested on an S3
server with IAM enforcement in tests/test_mlflow_stack.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "manifests/base/mlflow/minio-setup.yaml"
KEYS = {("longrl-minio-root", "access-key-id"): "root-user-7f3a",
        ("longrl-minio-root", "secret-access-key"): "root-secret-9c1d2e3f4a5b",
        ("longrl-mlflow-s3", "access-key-id"): "longrl-mlflow",
        ("longrl-mlflow-s3", "secret-access-key"): "mlflow-secret-0a1b2c3d4e5f"}  # fmt: skip

FAKE_MC = r"""
import json, os, sys
state_path = os.environ["FAKE_MC_STATE"]
st = json.load(open(state_path))
a = sys.argv[1:]
def fail(msg):
    print("mc: <ERROR> " + msg, file=sys.stderr)
    sys.exit(1)
def alias(name):
    if name not in st["aliases"]:
        fail(f"No such alias `{name}` found.")
if a[:2] == ["alias", "set"]:
    if a[4:6] != st["root"]:
        fail("Unable to initialize new alias from the provided credentials. The Access Key Id you provided does not exist in our records.")
    st["aliases"] = sorted(set(st["aliases"]) | {a[2]}); print(f"Added `{a[2]}` successfully.")
elif a[0] == "mb":
    name, bucket = a[-1].split("/", 1); alias(name)
    if bucket in st["buckets"] and "--ignore-existing" not in a:
        fail("Unable to make bucket. Your previous request to create the named bucket succeeded and you already own it.")
    st["buckets"] = sorted(set(st["buckets"]) | {bucket})
elif a[:3] == ["admin", "policy", "create"]:
    alias(a[3]); st["policies"][a[4]] = json.load(open(a[5]))
elif a[:3] == ["admin", "user", "add"]:
    alias(a[3])
    if a[4] == st["root"][0]:
        fail("Unable to add new user. The specified user already exists as the root user.")
    user = st["users"].setdefault(a[4], {"policies": []}); user["secret"] = a[5]
    print(f"Added user `{a[4]}` successfully.")
elif a[:3] == ["admin", "policy", "attach"] and a[5] == "--user":
    alias(a[3]); name, who = a[4], a[6]
    if name not in st["policies"] or who not in st["users"]:
        fail("Unable to make user/group policy association. The specified policy does not exist.")
    if name in st["users"][who]["policies"]:
        if os.environ.get("FAKE_MC_OLD_ATTACH"):
            fail("Unable to make user/group policy association. The specified policy change is already in effect. (Specified policy update has no net effect).")
    else:
        st["users"][who]["policies"].append(name)
    print(f"Attached Policies: [{name}]\nTo User: {who}")
else:
    fail(f"unexpected: {a}")
json.dump(st, open(state_path, "w"))
"""


def job() -> dict:
    docs = list(yaml.safe_load_all(SETUP.read_text()))
    return next(d for d in docs if d["kind"] == "Job")


def shipped_policy() -> dict:
    docs = list(yaml.safe_load_all(SETUP.read_text()))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    return json.loads(cm["data"]["mlflow-artifacts.json"])


@pytest.fixture
def minio(tmp_path):
    """A stand-in MinIO admin state plus `mc` on PATH; run(keys, **env) runs the Job's script."""
    bin_dir, policy_dir = tmp_path / "bin", tmp_path / "policy"
    bin_dir.mkdir()
    policy_dir.mkdir()
    (bin_dir / "mc").write_text(f"#!{sys.executable}\n{FAKE_MC}")
    (bin_dir / "mc").chmod(0o755)
    cm = next(d for d in yaml.safe_load_all(SETUP.read_text()) if d["kind"] == "ConfigMap")
    for name, text in cm["data"].items():  # the ConfigMap volume's files
        (policy_dir / name).write_text(text)
    state = tmp_path / "state.json"
    root = [
        KEYS[("longrl-minio-root", "access-key-id")],
        KEYS[("longrl-minio-root", "secret-access-key")],
    ]
    state.write_text(
        json.dumps({"root": root, "aliases": [], "buckets": [], "policies": {}, "users": {}})
    )
    container = job()["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("/policy/", f"{policy_dir}/")

    def run(keys: dict, **extra: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_MC_STATE": str(state), **extra}
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = keys[(ref["name"], ref["key"])]
        env["HOME"] = str(tmp_path)
        proc = subprocess.run(
            [*container["command"], script], env=env, capture_output=True, text=True, timeout=60
        )
        for secret in (v for (_, k), v in keys.items() if k == "secret-access-key"):
            assert secret not in proc.stdout + proc.stderr  # nothing secret reaches the Job's log
        assert keys[("longrl-minio-root", "access-key-id")] not in proc.stdout + proc.stderr
        return proc

    run.state = lambda: json.loads(state.read_text())  # type: ignore[attr-defined]
    return run


def test_setup_creates_bucket_policy_and_scoped_user_and_reruns(minio):
    first = minio(KEYS)
    assert first.returncode == 0, first.stderr
    st = minio.state()
    assert st["buckets"] == ["mlflow-artifacts"]
    assert st["policies"] == {"longrl-mlflow-artifacts": shipped_policy()}
    assert st["users"] == {"longrl-mlflow": {"policies": ["longrl-mlflow-artifacts"],
                                             "secret": KEYS[("longrl-mlflow-s3", "secret-access-key")]}}  # fmt: skip
    assert first.stdout.strip() == ("minio-setup: bucket mlflow-artifacts and the MLflow user with policy "
                                    "longrl-mlflow-artifacts are in place")  # fmt: skip
    again = minio(KEYS)  # re-applied after its TTL, or re-run by hand
    assert again.returncode == 0, again.stderr
    assert minio.state() == st
    old_mc = minio(
        KEYS, FAKE_MC_OLD_ATTACH="1"
    )  # mc before 2024-10: attach of an attached policy fails
    assert old_mc.returncode == 0, old_mc.stderr
    assert minio.state() == st


def test_rerun_with_a_new_secret_rotates_it(minio):
    assert minio(KEYS).returncode == 0
    rotated = {**KEYS, ("longrl-mlflow-s3", "secret-access-key"): "mlflow-secret-rotated-5e6f7a8b"}
    proc = minio(rotated)
    assert proc.returncode == 0, proc.stderr
    assert minio.state()["users"]["longrl-mlflow"]["secret"] == "mlflow-secret-rotated-5e6f7a8b"


def test_failures_stop_the_job_without_printing_keys(minio):
    wrong_root = {**KEYS, ("longrl-minio-root", "secret-access-key"): "not-the-root-secret"}
    proc = minio(wrong_root)
    assert proc.returncode != 0 and "Unable to initialize new alias" in proc.stderr
    assert minio.state()["users"] == {}
    same_as_root = {
        **KEYS,
        ("longrl-mlflow-s3", "access-key-id"): KEYS[("longrl-minio-root", "access-key-id")],
    }
    proc = minio(same_as_root)  # the scoped user may not be the root user
    assert proc.returncode != 0 and "root user" in proc.stderr
    assert os.path.basename(job()["spec"]["template"]["spec"]["containers"][0]["image"]).startswith(
        "mc:"
    )
