"""`suite bench` results in the store: ``log_bench`` writes one run of experiment ``bench``
(the rows as a table artifact and as metrics, the length as the step), ``records`` reads the
newest such run per device back for the leaderboard's speed table, where ``ratio`` is an
implementation's median time over ``BASELINE``'s at the same length and pass, measured in the
same run on the same machine.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from . import schema

EXPERIMENT = schema.BENCH_EXPERIMENT
TABLE = "bench_table.json"
BASELINE = "sdpa_softmax"
FILTER = schema.where(kind=schema.BENCH, status="FINISHED")
SCHEMA = {"device": pl.Utf8, "impl": pl.Utf8, "T": pl.Int64, "pass": pl.Utf8,
          "median_ms": pl.Float64}


def metric_key(row: Mapping[str, Any]) -> str:
    """e.g. ``median_ms.numba_entmax15.fwd_bwd`` (MLflow keys allow no "+")."""
    return "median_ms." + re.sub(r"[^0-9A-Za-z_.-]+", "_", f"{row['impl']}.{row['pass']}")


def log_bench(rows: Sequence[Mapping[str, Any]], tracking_uri: str | None = None,
              kind: str = schema.BENCH, git: dict[str, str] | None = None) -> str:
    """Store one `suite bench` run, tagged with ``git`` (default: git's state of this
    checkout); returns its run id. If the store fails, the rows are kept
    in ``results/bench-unlogged-<time>.json`` and the error names that file and the URI.
    ``kind`` "bench" is the kernel table (experiment ``bench``, read back by ``records``);
    "bench_train" the training-throughput table of `suite bench --train` (its own
    experiment)."""
    from .gitinfo import git_state
    from .tracking import Tracker, TrackingError

    rows = [dict(r) for r in rows]
    try:
        tracker = Tracker(tracking_uri)
        device = str(rows[0].get("device", "")) if rows else ""
        tags = {schema.KIND: kind, schema.tag("device"): device,
                **{schema.tag(k): v for k, v in (git or git_state()).items()}}
        about = (f"`suite bench{' --train' if kind == schema.BENCH_TRAIN else ''}` runs, one "
                 "per measurement, named by device. The rows are the table bench_table.json; "
                 "the metrics are median times per implementation and pass, with the sequence "
                 "length as the step (the chart view draws them against length).")
        with tracker.run(kind, f"{kind} | {device}", {"rows": len(rows)}, tags,
                         description=about) as log:
            for row in rows:
                log.metrics({metric_key(row): row["median_ms"]}, step=int(row["T"]))
            log.table(_columns(rows), TABLE)
            return log.run_id
    except TrackingError as err:
        kept = _keep(rows)
        raise TrackingError(f"{err} The benchmark rows are kept in {kept}: log them with "
                            f"`suite bench --from-json {kept}`.") from err


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


KEPT = "suite-bench-rows"  # the ``kind`` of a file of rows kept when the store failed


def _keep(rows) -> Path:
    path = Path("results") / f"bench-unlogged-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": KEPT, "rows": rows}, indent=1, default=str))
    return path.resolve()


def kept_rows(data: Any) -> list[dict] | None:
    """The rows of a file that ``log_bench`` kept (None for any other JSON), checked for the
    fields the speed table needs."""
    if not (isinstance(data, dict) and data.get("kind") == KEPT):
        return None
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError("kept rows: no rows in it")
    for i, row in enumerate(rows):
        missing = [k for k in ("impl", "T", "pass", "median_ms") if k not in row]
        if missing:
            raise ValueError(f"kept rows: row {i} has no {', '.join(missing)}")
    return rows


def records(tracker) -> pl.DataFrame:
    """The rows of the newest FINISHED bench run per device, with ``ratio`` to BASELINE."""
    exp_id = tracker.existing(EXPERIMENT)
    if exp_id is None:
        return pl.DataFrame(schema={**SCHEMA, "ratio": pl.Float64})
    newest: dict[str, str] = {}
    for run in tracker.search([exp_id], FILTER):  # newest first
        newest.setdefault(run.data.tags.get(schema.tag("device"), ""), run.info.run_id)
    frames = [_table(tracker, run_id, device) for device, run_id in newest.items()]
    return ratios(pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA))


def _table(tracker, run_id: str, device: str) -> pl.DataFrame:
    data = json.loads(tracker.artifact_text(run_id, TABLE))
    df = pl.DataFrame(data["data"], schema=data["columns"], orient="row")
    return df.select(pl.lit(device).alias("device"), pl.col("impl").cast(pl.Utf8),
                     pl.col("T").cast(pl.Int64), pl.col("pass").cast(pl.Utf8),
                     pl.col("median_ms").cast(pl.Float64))


def ratios(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``ratio``: median_ms over BASELINE's median_ms at the same (device, T, pass)."""
    base = df.filter(pl.col("impl") == BASELINE).select(
        "device", "T", "pass", pl.col("median_ms").alias("_base"))
    return (df.join(base, on=["device", "T", "pass"], how="left", maintain_order="left")
            .with_columns((pl.col("median_ms") / pl.col("_base")).alias("ratio"))
            .drop("_base"))
