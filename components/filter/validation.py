"""Data validation of clip tables with Great Expectations 1.x, suites written in code (`docs/curation.md`).

`validate_table(df, name)` runs one suite on an ephemeral GX context with a pandas datasource:

* schema: the training-required columns exist (`path,text,num_frames,height,width,aspect_ratio,resolution,fps`)
* nulls: no missing values in those columns
* types: integers / numbers / strings where expected
* ranges: num_frames >= 1, 0 < fps <= 120, height/width/resolution/aspect_ratio > 0, scores in range
* uniqueness of `path`
* files: every `path` exists, is a regular non-empty file and is readable (computed into the helper column
  `_path_readable`, then expected to be all True -- GX has no file-system expectation)

A failing suite raises `ValidationError` whose message is a readable report (which expectation, how many
rows, example values and row indices); `save_report` writes it as JSON and Markdown.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from soraflow.common.atomic import write_text_atomic
from soraflow.common.clip_table import REQUIRED_COLUMNS

__all__ = ["ValidationError", "validate_table", "preload_engine", "covered_report", "save_report", "SCORE_RANGES", "format_report"]

INT_COLUMNS = ["num_frames", "height", "width", "resolution"]
FLOAT_COLUMNS = ["aspect_ratio", "fps"]
# column -> (min, max); NaN allowed (a scorer that did not run leaves NaN)
SCORE_RANGES = {
    "score_vmafmotion": (0.0, 1000.0),
    "score_blur": (0.0, None),
    "score_jitter": (0.0, None),
    "score_content": (0.0, 255.0),
    "score_aesthetic": (0.0, 10.0),
    "score_ocr": (0.0, 1.0),
}
RANGES = {  # column -> (min, max, strict_min)
    "num_frames": (1, None, False),
    "fps": (0, 120, True),
    "height": (0, None, True),
    "width": (0, None, True),
    "resolution": (0, None, True),
    "aspect_ratio": (0, None, True),
}
_INT_TYPES = ["int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "Int64", "Int32"]
_NUM_TYPES = _INT_TYPES + ["float", "float16", "float32", "float64", "Float64"]
_STR_TYPES = ["object", "str", "string", "StringDtype", "string[python]", "string[pyarrow]", "large_string"]


class ValidationError(ValueError):
    """A table failed its suite; `report` holds the structured report, `paths` where it was saved."""

    def __init__(self, report: dict[str, Any], paths: dict[str, str] | None = None):
        self.report = report
        self.paths = paths or {}
        where = f"\nreport saved to {self.paths.get('markdown')}" if self.paths else ""
        super().__init__(format_report(report) + where)


def preload_engine() -> threading.Thread:
    """Import Great Expectations on a background thread (about 2 s of pure import on this machine), so a
    caller can overlap it with other work; a later `validate_table` waits for the module as usual."""

    def _load():
        import great_expectations  # noqa: F401

    thread = threading.Thread(target=_load, name="gx-preload", daemon=True)
    thread.start()
    return thread


def _readable(p) -> bool:
    try:
        p = str(p)
        return os.path.isfile(p) and os.path.getsize(p) > 0 and os.access(p, os.R_OK)
    except (OSError, TypeError, ValueError):
        return False


def _plan(df: pd.DataFrame, check_files: bool) -> list[tuple[str, dict[str, Any], str]]:
    """(expectation type, kwargs, description) for this table; per-column checks only for present columns."""
    plan: list[tuple[str, dict[str, Any], str]] = []
    for c in REQUIRED_COLUMNS:
        plan.append(("expect_column_to_exist", {"column": c}, f"schema: column `{c}` exists"))
    present = [c for c in REQUIRED_COLUMNS if c in df.columns]
    for c in present:
        plan.append(("expect_column_values_to_not_be_null", {"column": c}, f"`{c}` has no missing values"))
    for c in INT_COLUMNS:
        if c in df.columns:
            plan.append(("expect_column_values_to_be_in_type_list", {"column": c, "type_list": _INT_TYPES},
                         f"`{c}` is an integer column"))
    for c in FLOAT_COLUMNS + [s for s in SCORE_RANGES if s in df.columns]:
        if c in df.columns:
            plan.append(("expect_column_values_to_be_in_type_list", {"column": c, "type_list": _NUM_TYPES},
                         f"`{c}` is numeric"))
    for c in ("path", "text"):
        if c in df.columns:
            plan.append(("expect_column_values_to_be_in_type_list", {"column": c, "type_list": _STR_TYPES},
                         f"`{c}` is a string column"))
    for c, (lo, hi, strict) in RANGES.items():
        if c in df.columns:
            kw = {"column": c, "min_value": lo, "max_value": hi, "strict_min": strict}
            plan.append(("expect_column_values_to_be_between", kw,
                         f"`{c}` {'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")))
    for c, (lo, hi) in SCORE_RANGES.items():
        if c in df.columns:
            plan.append(("expect_column_values_to_be_between", {"column": c, "min_value": lo, "max_value": hi},
                         f"`{c}` within [{lo}, {hi if hi is not None else 'inf'}]"))
    if "path" in df.columns:
        plan.append(("expect_column_values_to_be_unique", {"column": "path"}, "`path` is unique"))
        if check_files:
            plan.append(("expect_column_values_to_be_in_set", {"column": "_path_readable", "value_set": [True]},
                         "every `path` exists, is a non-empty regular file and is readable"))
    return plan


def _snake_to_camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def _examples(df: pd.DataFrame, column: str, idx: list) -> tuple[list, list]:
    idx = [i for i in idx if i in df.index][:5]
    shown = "path" if column == "_path_readable" else column
    vals = [df.at[i, shown] if shown in df.columns else None for i in idx]
    vals = [v.item() if hasattr(v, "item") else v for v in vals]
    return idx, [None if (isinstance(v, float) and pd.isna(v)) else v for v in vals]


def _run_gx(df: pd.DataFrame, name: str, plan) -> list[dict[str, Any]]:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    ds = ctx.data_sources.add_pandas(f"soraflow_{name}")
    asset = ds.add_dataframe_asset(name=name)
    batch_def = asset.add_batch_definition_whole_dataframe("whole_table")
    suite = gx.ExpectationSuite(name=f"soraflow_clip_table_{name}")
    for typ, kw, _ in plan:
        suite.add_expectation(getattr(gx.expectations, _snake_to_camel(typ))(**kw))
    suite = ctx.suites.add(suite)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    res = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": []})
    out = []
    by_key = {}
    for r in res.results:
        cfg = r.expectation_config
        by_key[(cfg.type, json.dumps({k: v for k, v in cfg.kwargs.items() if k != "batch_id"}, sort_keys=True,
                                     default=str))] = r
    for typ, kw, desc in plan:
        key = (typ, json.dumps(kw, sort_keys=True, default=str))
        r = by_key.get(key)
        if r is None:  # match by type + column as a fallback (GX may add default kwargs)
            r = next((x for x in res.results if x.expectation_config.type == typ
                      and x.expectation_config.kwargs.get("column") == kw.get("column")), None)
        result = dict(r.result or {}) if r is not None else {}
        exc = (r.exception_info or {}) if r is not None else {}
        raised = bool(exc.get("raised_exception")) if isinstance(exc, dict) else False
        idx = list(result.get("unexpected_index_list") or [])
        idx = [i if not isinstance(i, dict) else next(iter(i.values())) for i in idx]
        col = kw.get("column", "")
        ex_idx, ex_vals = _examples(df, col, idx)
        out.append({
            "expectation": typ, "description": desc, "kwargs": kw,
            "success": bool(r.success) if r is not None else False,
            "unexpected_count": int(result.get("unexpected_count") or (0 if typ != "expect_column_to_exist" or
                                                                       (r is not None and r.success) else len(df))),
            "example_rows": ex_idx, "example_values": ex_vals,
            "error": (exc.get("exception_message") if raised else None),
        })
    return out


def validate_table(df: pd.DataFrame, name: str, *, check_files: bool = True, raise_on_failure: bool = True
                   ) -> dict[str, Any]:
    """Run the clip-table suite; returns the report dict (`success`, `engine`, `expectations`, ...).
    Raises `ValidationError` on failure unless `raise_on_failure=False`."""
    work = df.reset_index(drop=True).copy()
    for c in ("path", "text"):  # pandas 3 `str` columns -> object: GX 1.24's type-list check misreads StringDtype
        if c in work.columns and isinstance(work[c].dtype, pd.StringDtype):
            work[c] = work[c].astype(object)
    if check_files and "path" in work.columns:
        work["_path_readable"] = [_readable(p) for p in work["path"]]
    plan = _plan(work, check_files)
    import great_expectations

    used = "great_expectations " + great_expectations.__version__
    results = _run_gx(work, name, plan)
    report = {
        "name": name, "engine": used, "rows": int(len(work)),
        "columns": [c for c in work.columns if c != "_path_readable"],
        "success": all(r["success"] for r in results),
        "expectations": results,
    }
    if raise_on_failure and not report["success"]:
        raise ValidationError(report)
    return report


def covered_report(df: pd.DataFrame, name: str, parent: pd.DataFrame, parent_report: dict[str, Any]
                   ) -> dict[str, Any] | None:
    """The report of `df` without running the suite again, when `df` is an exact row subset of `parent` and
    `parent` passed: same columns and dtypes, unique paths, every row equal to the parent's row of that path.
    Each expectation of the suite is a per-row check, a schema check or path uniqueness, so all of them hold
    on such a subset (the 768px set is a subset of the 256px set by construction). Returns None otherwise,
    and the caller validates `df` in full."""
    if not parent_report.get("success") or list(df.columns) != list(parent.columns):
        return None
    if not df.dtypes.equals(parent.dtypes) or "path" not in df.columns or df["path"].duplicated().any():
        return None
    if parent["path"].duplicated().any():
        return None
    rows = parent.set_index("path", drop=False).reindex(df["path"]).reset_index(drop=True)
    if not rows.equals(df.reset_index(drop=True)):
        return None
    return {**parent_report, "name": name, "rows": int(len(df)), "covered_by": parent_report["name"],
            "expectations": [dict(e) for e in parent_report["expectations"]]}


def format_report(report: dict[str, Any]) -> str:
    failed = [e for e in report["expectations"] if not e["success"]]
    n_all = len(report["expectations"])
    verdict = "PASSED" if report["success"] else f"FAILED {len(failed)} of {n_all} expectations"
    head = f"validation of `{report['name']}` ({report['rows']} rows, {report['engine']}): {verdict}"
    lines = [head]
    for e in failed:
        line = f"- {e['expectation']} [{e['description']}]: {e['unexpected_count']} row(s)"
        if e["example_rows"]:
            line += f"; rows {e['example_rows']} values {e['example_values']}"
        if e.get("error"):
            line += f"; error: {e['error']}"
        lines.append(line)
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Validation report: {report['name']}", "",
             f"- engine: {report['engine']}", f"- rows: {report['rows']}",
             f"- result: **{'PASSED' if report['success'] else 'FAILED'}**", "",
             "| expectation | check | ok | bad rows | example rows | example values |", "|---|---|---|---|---|---|"]
    for e in report["expectations"]:
        vals = ", ".join(str(v) for v in e["example_values"]).replace("|", "\\|")
        lines.append(f"| `{e['expectation']}` | {e['description']} | {'yes' if e['success'] else '**NO**'} | "
                     f"{e['unexpected_count']} | {e['example_rows']} | {vals} |")
    return "\n".join(lines) + "\n"


def save_report(report: dict[str, Any], stem: str | Path) -> dict[str, str]:
    """Write `<stem>.json` and `<stem>.md` (temp-then-rename); returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext, text in (("json", json.dumps(report, indent=2, default=str)), ("md", _markdown(report))):
        target = stem.with_name(stem.name + f".{ext}")
        write_text_atomic(target, text)
        paths["json" if ext == "json" else "markdown"] = str(target)
    return paths
