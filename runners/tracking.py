"""MLflow mirror of the run records (the records stay the source of truth).

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/results/mlflow.db`` with
artifacts under ``results/mlartifacts`` (mlflow otherwise creates a database in the working
directory, ASSETS.md). One experiment per table; a run per job with params (the flattened
resolved config), the metric curves, and tags table/row/column/seed/job hash.
"""
from __future__ import annotations

import os
import warnings

from runners import records


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{records.results_dir() / 'mlflow.db'}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def mirror(table_id: str, record: dict, cells: list[str]) -> None:
    """Log one finished job record to MLflow; a tracking failure only warns."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        exp = client.get_experiment_by_name(table_id)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            table_id, artifact_location=(records.results_dir() / "mlartifacts" / table_id).as_uri())
        cell = next((c for c in cells if c.startswith(table_id + "/")), cells[0] if cells else "")
        _, row, column = (cell.split("/") + ["", "", ""])[:3]
        tags = {"table": table_id, "row": row, "column": column, "seed": str(record["seed"]),
                "job_hash": record["job"], "role": record["role"], "cells": ",".join(cells)}
        run = client.create_run(exp_id, tags=tags, run_name=f"{row}/{column}/s{record['seed']}")
        rid = run.info.run_id
        from mlflow.entities import Metric, Param
        params = [Param(k[:250], str(v)[:6000]) for k, v in list(_flat(record["config"]).items())[:400]]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i:i + 100])
        ms = [Metric("train_loss", v, 0, s) for s, v in record["curves"]["train_loss"]]
        for s, m in record["curves"]["eval"]:
            ms += [Metric(f"dev_{k}", float(v), 0, s) for k, v in m.items() if isinstance(v, (int, float))]
        ms += [Metric("score", float(record["score"]), 0, record["steps"]),
               Metric("score_last", float(record["score_last"]), 0, record["steps"])]
        for i in range(0, len(ms), 900):
            client.log_batch(rid, metrics=ms[i:i + 900])
        client.set_terminated(rid)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"MLflow mirror failed for job {record.get('job')}: {e}")
