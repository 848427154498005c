"""The MLflow server exactly as manifests/base/mlflow/mlflow.yaml starts it (its command, args and
env), against a real PostgreSQL (Debian's `postgresql`, a local cluster on 127.0.0.1) and an
S3 server (moto's server mode, in its own venv like checkov): issue 15 findings 1, 13 and 17.

- The backend URI the manifest builds works with the image's driver (psycopg2); plain
  `postgresql://` needs psycopg v3 under SQLAlchemy 2.1 (the crash at start).
- basic-auth: no request without a user; a reader cannot move @champion; the pipeline's user
  logs a checkpoint (bytes land in the S3 bucket through the proxy), registers and promotes.
- The promotion race of tests/test_registry_races.py on PostgreSQL: the better model wins.
- Least privilege for S3 (15.17): moto enforces IAM (`/moto-api/reset-auth` 0, the server-mode
  form of INITIAL_NO_AUTH_ACTION_COUNT) after it is set up as the minio-setup Job sets up MinIO:
  an admin standing for MinIO's root, the bucket, and the MLflow user holding exactly the policy
  document the manifest ships. That user may list/put/get/delete in the artifact bucket and is
  denied everything else; the MLflow server runs with that user's keys only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MOTO_VERSION = "5.2.5"
# In CI these services must run, not skip (as kubectl in tests/test_manifests.py).
REQUIRED = bool(os.environ.get("CI"))
SECRETS = {("longrl-mlflow-db", "username"): "mlflow", ("longrl-mlflow-db", "password"): "db0pw0hex",
           ("longrl-mlflow-auth", "admin-username"): "admin",
           ("longrl-mlflow-auth", "admin-password"): "admin-pw-0123456789",
           ("longrl-mlflow-auth", "flask-secret-key"): "flask-0123456789"}  # fmt: skip


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what} is required in CI and was not found")
    pytest.skip(f"{what} not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not cands and os.geteuid() == 0 and shutil.which("apt-get"):  # a fresh machine: install it
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, timeout=600
        )
        cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return cands[-1].parent if cands else None


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL cluster on 127.0.0.1 (run as the `postgres` user when we are root)."""
    pg = _pg_bin()
    if pg is None:
        _missing("PostgreSQL (Debian package postgresql)")
    root = Path(tmp_path_factory.mktemp("pg"))
    data, pw = root / "data", root / "pw"
    pw.write_text(SECRETS[("longrl-mlflow-db", "password")])
    user = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(pw, "postgres")
        user = ["runuser", "-u", "postgres", "--"]
        for parent in root.parents:  # the data folder must be reachable by that user
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o001)
    port = _free_port()
    run = lambda *a: subprocess.run([*user, *a], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(pg / "initdb"), "-D", str(data), "-U", "mlflow", "--pwfile", str(pw), "--auth-local=trust",
        "--auth-host=scram-sha-256")  # fmt: skip
    run(str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start")  # fmt: skip
    try:
        run(str(pg / "createdb"), "-h", str(root), "-p", str(port), "-U", "mlflow", "mlflow")
        yield {"host": "127.0.0.1", "port": port}
    finally:
        subprocess.run(
            [*user, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )


def _moto_bin() -> Path:
    venv = ROOT / ".tmp" / "tools" / "moto"
    exe = venv / "bin" / "moto_server"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"moto[server]=={MOTO_VERSION}"],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0 or not exe.exists():
            _missing(f"moto[server] ({res.stderr[-300:]})")
    return exe


def shipped_mlflow_policy() -> str:
    """The policy document the minio-setup Job gives MLflow's MinIO user, as rendered."""
    docs = yaml.safe_load_all((ROOT / "manifests/base/mlflow/minio-setup.yaml").read_text())
    return next(d for d in docs if d["kind"] == "ConfigMap")["data"]["mlflow-artifacts.json"]


def _s3_client(url: str, key: tuple[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=key[0], aws_secret_access_key=key[1],
                        region_name="us-east-1")  # fmt: skip


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 with IAM enforced, set up like MinIO after the minio-setup Job."""
    port = _free_port()
    log = Path(tmp_path_factory.mktemp("moto")) / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(_moto_bin()), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, log)
        import boto3

        iam = boto3.client("iam", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                           region_name="us-east-1")  # fmt: skip

        def user(
            name: str, policy: str
        ) -> tuple[str, str]:  # `mc admin user add` + policy create/attach
            iam.create_user(UserName=name)
            arn = iam.create_policy(PolicyName=name, PolicyDocument=policy)["Policy"]["Arn"]
            iam.attach_user_policy(UserName=name, PolicyArn=arn)
            key = iam.create_access_key(UserName=name)["AccessKey"]
            return key["AccessKeyId"], key["SecretAccessKey"]

        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        root = user("minio-root", json.dumps(everything))
        mlflow_key = user("longrl-mlflow", shipped_mlflow_policy())
        admin = _s3_client(url, root)
        admin.create_bucket(Bucket="mlflow-artifacts")
        admin.create_bucket(Bucket="other-bucket")
        admin.put_object(Bucket="other-bucket", Key="secret.txt", Body=b"not for MLflow")
        # From here on every request is authenticated and authorised (moto's default is never).
        req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        yield {"url": url, "client": admin, "mlflow_key": mlflow_key}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def manifest_container() -> dict:
    docs = yaml.safe_load_all((ROOT / "manifests/base/mlflow/mlflow.yaml").read_text())
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    return deploy["spec"]["template"]["spec"]["containers"][0]


def container_env(
    container: dict, overrides: dict[str, str], secrets: dict | None = None
) -> dict[str, str]:
    """The container's env as the kubelet builds it: Secret refs resolved (from `secrets`, else
    SECRETS), $(VAR) expanded from the variables defined before it; `overrides` (local hosts and
    ports) replace values."""
    secrets = SECRETS if secrets is None else secrets
    env: dict[str, str] = {}
    for item in container["env"]:
        if item["name"] in overrides:
            env[item["name"]] = overrides[item["name"]]
        elif "value" in item:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[(ref["name"], ref["key"])]
    return env


@pytest.fixture(scope="module")
def stack(postgres, s3, tmp_path_factory):
    """`mlflow server` from the manifest's own command line and env."""
    c = manifest_container()
    root = Path(tmp_path_factory.mktemp("mlflow-stack"))
    port = _free_port()
    env = container_env(c, {"DB_HOST": postgres["host"], "DB_PORT": str(postgres["port"]),
                            "MLFLOW_S3_ENDPOINT_URL": s3["url"], "HOME": str(root),
                            "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
                            "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port}"},
                        {**SECRETS, ("longrl-mlflow-s3", "access-key-id"): s3["mlflow_key"][0],
                         ("longrl-mlflow-s3", "secret-access-key"): s3["mlflow_key"][1]})  # fmt: skip
    # The server holds the bucket-scoped user's keys, not the store's root keys (issue 15.17).
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == s3["mlflow_key"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith(
        "postgresql+psycopg2://mlflow:db0pw0hex@127.0.0.1:"
    )
    script = (
        c["args"][0]
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        .replace("--port=5000", f"--port={port}")
    )
    script = script.replace("--workers=2", "--workers=1")  # 2 shared CPU cores
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*c["command"], script], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=root, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health", proc, log, timeout=180)
        yield {"url": url, "env": env, "s3": s3}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_plain_postgresql_uri_needs_psycopg3_which_the_image_lacks():
    """Why the manifest spells the driver: SQLAlchemy 2.1's default PostgreSQL dialect."""
    import sqlalchemy

    with pytest.raises(ModuleNotFoundError, match="psycopg"):
        sqlalchemy.create_engine("postgresql://u:p@127.0.0.1:1/x")
    sqlalchemy.create_engine("postgresql+psycopg2://u:p@127.0.0.1:1/x")  # the image's driver


def test_mlflow_s3_user_may_use_its_bucket_only(s3):
    """The shipped policy, enforced: the MLflow user works in mlflow-artifacts and nowhere else,
    and cannot change buckets or their policies. Control: the same calls as the admin succeed,
    so a denial is the policy's doing."""
    from botocore.exceptions import ClientError

    user, admin = _s3_client(s3["url"], s3["mlflow_key"]), s3["client"]
    user.put_object(Bucket="mlflow-artifacts", Key="runs/1/a.txt", Body=b"artifact")
    assert (
        user.get_object(Bucket="mlflow-artifacts", Key="runs/1/a.txt")["Body"].read() == b"artifact"
    )
    listed = user.list_objects_v2(Bucket="mlflow-artifacts", Prefix="runs/1/")["Contents"]
    assert [o["Key"] for o in listed] == ["runs/1/a.txt"]
    user.get_bucket_location(Bucket="mlflow-artifacts")
    upload = user.create_multipart_upload(
        Bucket="mlflow-artifacts", Key="runs/1/big"
    )  # large checkpoints
    user.abort_multipart_upload(
        Bucket="mlflow-artifacts", Key="runs/1/big", UploadId=upload["UploadId"]
    )
    user.delete_object(Bucket="mlflow-artifacts", Key="runs/1/a.txt")
    # (moto checks a multi-object DeleteObjects against the bucket ARN, AWS and MinIO against
    # each key's: that call is not a measure of the policy here.)

    def denied(call, *args, **kw) -> str:
        with pytest.raises(ClientError) as err:
            call(*args, **kw)
        return err.value.response["Error"]["Code"]

    forbidden = [(user.get_object, {"Bucket": "other-bucket", "Key": "secret.txt"}),
                 (user.list_objects_v2, {"Bucket": "other-bucket"}),
                 (user.put_object, {"Bucket": "other-bucket", "Key": "x", "Body": b"x"}),
                 (user.delete_object, {"Bucket": "other-bucket", "Key": "secret.txt"}),
                 (user.create_bucket, {"Bucket": "mlflow-new"}),
                 (user.delete_bucket, {"Bucket": "mlflow-artifacts"}),
                 (user.put_bucket_policy, {"Bucket": "mlflow-artifacts", "Policy": shipped_mlflow_policy()}),
                 (user.list_buckets, {})]  # fmt: skip
    for call, kw in forbidden:
        assert denied(call, **kw) == "AccessDenied", call.__name__
    assert (
        admin.get_object(Bucket="other-bucket", Key="secret.txt")["Body"].read()
        == b"not for MLflow"
    )
    admin.list_buckets()
    # Authentication is on: keys of no IAM user, or a wrong secret, are refused.
    assert (
        denied(
            _s3_client(s3["url"], ("testing", "testing")).list_objects_v2, Bucket="mlflow-artifacts"
        )
        == "InvalidAccessKeyId"
    )
    wrong = _s3_client(s3["url"], (s3["mlflow_key"][0], "not-the-secret"))
    assert denied(wrong.list_objects_v2, Bucket="mlflow-artifacts") == "SignatureDoesNotMatch"


def _as(monkeypatch, url: str, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def test_manifest_server_on_postgres_and_s3_with_auth(stack, monkeypatch, tmp_path, tiny_model_dir):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from common import registry, tracking

    url = stack["url"]
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as anon:
        urllib.request.urlopen(req, timeout=10)
    assert anon.value.code == 401  # no user, no access: any pod could move @champion before

    _as(monkeypatch, url, "admin", SECRETS[("longrl-mlflow-auth", "admin-password")])
    admin = AuthServiceClient(url)
    admin.create_user("pipeline", "pipeline-pw-0123456789")
    admin.create_user("reader", "reader-pw-0123456789")

    _as(monkeypatch, url, "pipeline", "pipeline-pw-0123456789")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "stack")
    with tracking.stage_run("sft") as run:
        source = run.log_checkpoint(tiny_model_dir)  # transformers flavour: bytes go to S3
    name = "lvr-stack"
    mv = registry.register_version(name, source, run_id=run.run_id)
    registry.record_eval(
        name, mv.version, {"lvr/score": 0.5}, succeeded=True, settings_digest="sha256:s"
    )
    registry.promote(name, mv.version, reason="first")
    keys = [
        o["Key"]
        for o in stack["s3"]["client"].list_objects_v2(Bucket="mlflow-artifacts")["Contents"]
    ]
    assert any(k.endswith("model.safetensors") for k in keys), keys
    # Listing and reading back work with the scoped keys too (ListBucket, GetObject).
    import mlflow
    import requests

    MlflowClient().log_text(run.run_id, "through the scoped user", "probe/least_privilege.txt")
    assert [f.path for f in MlflowClient().list_artifacts(run.run_id, "probe")] == [
        "probe/least_privilege.txt"
    ]
    # MLflow 3 clients download through presigned URLs the server signs for MLFLOW_S3_ENDPOINT_URL
    # (why MinIO admits the run namespaces, by its cluster-wide name). moto cannot check a
    # presigned request while it enforces IAM (it reads the Authorization header: HTTP 500), so
    # here the client streams through the server, as a client that cannot reach MinIO would.
    root = MlflowClient().get_run(run.run_id).info.artifact_uri.removeprefix("mlflow-artifacts:/")
    info = requests.get(f"{url}/api/2.0/mlflow-artifacts/presigned/{root}/probe/least_privilege.txt",
                        auth=("pipeline", "pipeline-pw-0123456789"), timeout=30)  # fmt: skip
    info.raise_for_status()
    assert info.json()["url"].startswith(
        f"{stack['env']['MLFLOW_S3_ENDPOINT_URL']}/mlflow-artifacts/"
    )
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    got = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="probe/least_privilege.txt",
                                              dst_path=str(tmp_path))  # fmt: skip
    assert Path(got).read_text() == "through the scoped user"

    _as(monkeypatch, url, "reader", "reader-pw-0123456789")
    assert registry.version_by_alias(name, "champion").version == mv.version  # reading is allowed
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        MlflowClient().set_registered_model_alias(name, "champion", mv.version)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        MlflowClient().delete_registered_model(name)


def test_promotion_race_on_postgres(stack, monkeypatch, tmp_path):
    from common import registry
    from tests.test_registry_races import _race

    _as(monkeypatch, stack["url"], "admin", SECRETS[("longrl-mlflow-auth", "admin-password")])
    name = "lvr-race-pg"
    _v1, _bad, good = _race(name, tmp_path, monkeypatch)
    assert registry.version_by_alias(name, "champion").version == good
