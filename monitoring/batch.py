"""What the batch steps push to a Pushgateway when they finish (``--pushgateway`` on ingest and filter).

One Pushgateway group per step and level, keyed by job + stage (``push_batch_metrics``): the next run of
the same step replaces it, and the series carry ``run_id`` / ``recipe`` as labels. Every value is a gauge
(``soraflow_batch_clips_in`` / ``_clips_kept`` / ``_clips_rejected``, ``_step_duration_seconds``,
``_last_success_timestamp_seconds``): the run's final numbers, pushed once.

* ``ingest`` counts **source videos**: in = sources listed, kept = sources that gave at least one clip,
  rejected by reason (``missing``, ``broken``, ``no_clips`` ...).
* ``filter_256`` / ``filter_768`` count **clips** of each level: 256px in = the input table, rejected by the
  scorer stage that dropped it (``motion``, ``blur`` ...); 768px in = the clips kept at 256px (a clip not in
  the 256px set is not a 768px candidate), rejected by the 768px thresholds' stage.

The run id comes from env ``SORAFLOW_RUN_ID`` (the pipeline sets it), else ``local``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from soraflow.monitoring.metrics import push_batch_metrics


def run_id_from_env() -> str:
    return os.environ.get("SORAFLOW_RUN_ID") or "local"


def ingest_groups(result: Any) -> list[tuple[str, dict]]:
    """``(stage, push kwargs)`` of an ``IngestResult``."""
    kept = int(result.clips["source_row"].nunique()) if len(result.clips) else 0
    rejected = {str(k): int(v) for k, v in (result.counts or {}).items()}
    return [("ingest", {"clips_in": kept + sum(rejected.values()), "clips_kept": kept,
                        "rejected_by_reason": rejected, "duration_s": float(result.seconds)})]


def filter_groups(counts: Mapping[str, Any], seconds: float | None = None) -> list[tuple[str, dict]]:
    """``(stage, push kwargs)`` of a filter run's ``counts`` (``FilterResult.counts`` / stats.json)."""
    rej_256 = {str(k): int(v) for k, v in (counts.get("rejected_256") or {}).items()}
    # "256px" in the 768px column means "not in the 256px set": not a 768px candidate, so not a 768px rejection.
    rej_768 = {str(k): int(v) for k, v in (counts.get("rejected_768") or {}).items() if k != "256px"}
    kept_256, kept_768 = int(counts["kept_256"]), int(counts["kept_768"])
    for level, n_in, kept, rej in (("256px", int(counts["input"]), kept_256, rej_256),
                                   ("768px", kept_256, kept_768, rej_768)):
        missing = n_in - kept - sum(rej.values())
        if missing < 0:
            raise ValueError(f"filter counts at {level}: kept {kept} + rejected {sum(rej.values())} > in {n_in}")
        if missing:  # a stage the counts do not name: still counted, so in = kept + rejected holds
            rej["other"] = rej.get("other", 0) + missing
    return [("filter_256", {"clips_in": int(counts["input"]), "clips_kept": kept_256,
                            "rejected_by_reason": rej_256, "duration_s": seconds}),
            ("filter_768", {"clips_in": kept_256, "clips_kept": kept_768,
                            "rejected_by_reason": rej_768, "duration_s": seconds})]


def push_groups(gateway: str, job: str, groups: list[tuple[str, dict]], *, run_id: str | None = None,
                recipe: str = "default") -> list[str]:
    """Push each group; returns the stages pushed. Raises the push error (the caller decides if it is fatal)."""
    run_id = run_id or run_id_from_env()
    for stage, kw in groups:
        push_batch_metrics(gateway, job, run_id=run_id, stage=stage, recipe=recipe, **kw)
    return [stage for stage, _ in groups]


def push_or_warn(gateway: str, job: str, groups: list[tuple[str, dict]], *, run_id: str | None = None,
                 recipe: str = "default") -> bool:
    """For the CLI, after the step's outputs are written: a monitoring outage must not fail (and so re-run) a
    finished batch step, so a failed push is a loud warning on stderr, not an error. Returns success."""
    import sys

    try:
        stages = push_groups(gateway, job, groups, run_id=run_id, recipe=recipe)
    except OSError as exc:  # URLError, connection refused, timeouts
        print(f"soraflow {job}: warning: metrics not pushed to {gateway}: {exc}", file=sys.stderr)
        return False
    print(f"soraflow {job}: pushed {', '.join(stages)} metrics to {gateway}", file=sys.stderr)
    return True
