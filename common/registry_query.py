"""Read-only registry queries: where a registered model lives (`materialize`, `location_uri`) and
the rows of `longrl registry show` (`describe`). Split from common.registry, which re-exports
them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.registry_lock import LOCK_SUFFIX, RegistryError, _client


def location_uri(path: str | Path, shared_volume: str = "") -> str:
    """`pvc://<claim>/<sub>` for a path on the shared volume (`shared_volume` = "claim:/mount"),
    else the absolute path: what a checkpoint reference records."""
    p = Path(path).resolve()
    claim, _, mount = shared_volume.partition(":")
    if claim and mount and p.is_relative_to(mount):
        return f"pvc://{claim}/{p.relative_to(mount)}"
    return str(p)


def materialize(model_uri: str, dst: str | Path, shared_volume: str = "") -> Path:
    """A local Hugging Face folder for a registered model (`models:/name/3`, `models:/name@champion`).

    A transformers-flavour version is downloaded into `dst`; a reference version
    (checkpoint_ref.json) resolves to its location: `pvc://claim/sub` -> the shared volume's
    mount, or a path. Anything else (an s3:// reference) is an error, never a guess.
    """
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    ref = next(iter(sorted(local.rglob("checkpoint_ref.json"))), None)
    if ref is not None:
        loc = json.loads(ref.read_text())["location_uri"]
        claim, _, mount = shared_volume.partition(":")
        if loc.startswith("pvc://"):
            ref_claim, _, sub = loc[len("pvc://") :].partition("/")
            if ref_claim != claim or not mount:
                raise RegistryError(
                    f"{model_uri} lives on volume {ref_claim!r}, which is not mounted here"
                )
            folder = Path(mount) / sub
        elif "://" in loc:
            raise RegistryError(f"{model_uri} refers to {loc}; copy it to a mounted volume first")
        else:
            folder = Path(loc)
        if not (folder / "config.json").is_file():
            raise RegistryError(
                f"{model_uri} refers to {folder}, which holds no model (no config.json)"
            )
        return folder
    for cfg in sorted(local.rglob("config.json")):
        if any(cfg.parent.glob("*.safetensors")):
            return cfg.parent
    raise RegistryError(f"{model_uri}: downloaded to {local} but found no model folder in it")


def describe(name: str | None = None) -> list[dict[str, Any]]:
    """Rows for `longrl registry show`: every version of `name` (or of every model)."""
    from common.registry import EVAL_STATUS_TAG, eval_metrics  # registry imports this module

    client = _client()
    names = [name] if name else [m.name for m in client.search_registered_models()
                                 if not m.name.endswith(LOCK_SUFFIX)]  # fmt: skip
    rows = []
    for model_name in names:
        model = client.get_registered_model(model_name)
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model_name}'"):
            rows.append({
                "name": model_name,
                "version": mv.version,
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "eval_status": mv.tags.get(EVAL_STATUS_TAG, ""),
                "metrics": eval_metrics(mv),
                "decision": mv.tags.get("promotion.decision", ""),
                "reason": mv.tags.get("promotion.reason", ""),
                "base_model": mv.tags.get("base_model", ""),
                "data_digest": mv.tags.get("data.digest", ""),
                "kfp_run_id": mv.tags.get("pipeline.kfp_run_id", ""),
                "source": mv.source,
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
            })  # fmt: skip
    rows.sort(key=lambda r: (r["name"], int(r["version"])))
    return rows
