"""The promotion lock of the MLflow model registry, and the client and error every registry
module shares (split from common.registry, which re-exports all of it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class RegistryError(RuntimeError):
    pass


def _client():  # noqa: ANN202 - mlflow imported lazily
    from mlflow import MlflowClient

    return MlflowClient()


# -- the promotion lock -------------------------------------------------------------------------
# MLflow has no compare-and-set on aliases: two promotions that both read @champion v1 and then
# both move it each "win", and the last writer - not the better model - ends as champion. The
# one atomic primitive the registry offers is creating a registered model (its name is the
# primary key: the second create fails with RESOURCE_ALREADY_EXISTS on SQLite and PostgreSQL
# alike), so a `<name>.promotion-lock` model is the mutex. Every alias move (gate, CLI promote)
# happens under it, after a fresh read of the alias. A holder that died leaves a lock whose
# lease (`expires` tag) runs out; the next promotion removes it.
LOCK_SUFFIX = ".promotion-lock"
LOCK_LEASE_S = 300.0


def _code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


@contextlib.contextmanager
def promotion_lock(name: str, holder: str, wait_s: float = 120.0, lease_s: float = LOCK_LEASE_S,
                   poll_s: float = 0.2) -> Iterator[None]:  # fmt: skip
    """Hold the promotion lock of registered model `name` (waits up to `wait_s`)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    lock = name + LOCK_SUFFIX
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder, "expires": f"{time.time() + lease_s:.3f}"},
                                           description=f"promotion lock of {name} (held while an alias moves)")  # fmt: skip
            break
        except MlflowException as exc:
            # DOES_NOT_EXIST: the server re-reads what it created, and a concurrent release can
            # fall in between; try again.
            if not any(
                c in _code(exc) for c in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
            ):
                raise
            if "RESOURCE_DOES_NOT_EXIST" in _code(exc):
                continue
        try:
            held = client.get_registered_model(lock)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in _code(exc):
                continue  # released meanwhile
            raise
        # The lease: the holder's `expires` tag, else (tags not visible yet) creation + lease.
        expires = float(held.tags.get("expires") or held.creation_timestamp / 1000 + lease_s)
        if expires < time.time():
            print(
                f"{name}: removing a stale promotion lock of {held.tags.get('holder', '?')} (lease ran out)"
            )
            _delete_lock(client, lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"{name}: another promotion ({held.tags.get('holder', '?')}) holds the lock; "
                                "try again later")  # fmt: skip
        time.sleep(poll_s)
    try:
        yield
    finally:
        _delete_lock(client, lock)


def _delete_lock(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in _code(exc):
            raise
