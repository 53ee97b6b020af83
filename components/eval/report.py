"""report.md and report.html from metrics.json: side-by-side tables, SVG plots (written directly, no plotting
dependency), GIF thumbnails of samples, trends across earlier runs (`history`: their metrics.json files)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from soraflow.common.atomic import atomic_path, write_text_atomic

from .vbench_scores import PUBLISHED

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def _fmt(v, nd=4) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) >= 1000 or abs(v) < 1e-3 and v != 0 else f"{v:.{nd}f}"
    return str(v)


def bar_svg(title: str, labels: list[str], series: dict[str, list[float | None]], width: int = 520,
            height: int = 240) -> str:
    """Grouped bars: one group per label, one bar per series (model); a null is drawn as a hatched 'n/a'."""
    vals = [v for s in series.values() for v in s if v is not None and np.isfinite(v)]
    top = max(vals + [0.0]) or 1.0
    low = min(vals + [0.0])
    span = (top - low) or 1.0
    left, bottom, plot_h = 48, 40, height - 70
    gw = (width - left - 10) / max(1, len(labels))
    bw = gw * 0.8 / max(1, len(series))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="10"><text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>']
    y0 = 20 + plot_h * top / span  # baseline of 0
    parts.append(f'<line x1="{left}" y1="{y0:.1f}" x2="{width - 10}" y2="{y0:.1f}" stroke="#333"/>')
    parts.append(f'<text x="{left - 4}" y="24" text-anchor="end">{_fmt(top, 3)}</text>')
    if low < 0:
        parts.append(f'<text x="{left - 4}" y="{20 + plot_h}" text-anchor="end">{_fmt(low, 3)}</text>')
    for gi, lab in enumerate(labels):
        gx = left + gi * gw + gw * 0.1
        for si, (name, s) in enumerate(series.items()):
            v = s[gi]
            x = gx + si * bw
            if v is None or not np.isfinite(v):
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{y0 - 4:.1f}" text-anchor="middle" fill="#999">n/a</text>')
                continue
            h = plot_h * abs(v) / span
            y = y0 - h if v >= 0 else y0
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.95:.1f}" height="{max(h, 0.5):.1f}" '
                         f'fill="{COLORS[si % len(COLORS)]}"><title>{html.escape(name)}: {_fmt(v)}</title></rect>')
        parts.append(f'<text x="{gx + gw * 0.4:.1f}" y="{height - 28}" text-anchor="middle">'
                     f'{html.escape(lab[:22])}</text>')
    for si, name in enumerate(series):
        parts.append(f'<rect x="{left + si * 110}" y="{height - 14}" width="10" height="10" '
                     f'fill="{COLORS[si % len(COLORS)]}"/><text x="{left + si * 110 + 14}" y="{height - 5}">'
                     f'{html.escape(name[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_svg(title: str, xlabels: list[str], series: dict[str, list[float | None]], width=520, height=220) -> str:
    vals = [v for s in series.values() for v in s if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    left, plot_w, plot_h = 48, width - 60, height - 70
    xs = [left + (plot_w * i / max(1, len(xlabels) - 1)) for i in range(len(xlabels))]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="10"><text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
             f'<text x="{left - 4}" y="24" text-anchor="end">{_fmt(hi, 3)}</text>',
             f'<text x="{left - 4}" y="{20 + plot_h}" text-anchor="end">{_fmt(lo, 3)}</text>']
    for i, lab in enumerate(xlabels):
        parts.append(f'<text x="{xs[i]:.1f}" y="{height - 28}" text-anchor="middle">{html.escape(lab[:14])}</text>')
    for si, (name, s) in enumerate(series.items()):
        pts = [(xs[i], 20 + plot_h * (hi - v) / (hi - lo)) for i, v in enumerate(s) if v is not None]
        c = COLORS[si % len(COLORS)]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>' for x, y in pts]
        parts.append(f'<rect x="{left + si * 110}" y="{height - 14}" width="10" height="10" fill="{c}"/>'
                     f'<text x="{left + si * 110 + 14}" y="{height - 5}">{html.escape(name[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curve_svg(title: str, series: dict[str, list[tuple[float, float]]], xlabel: str = "step", width: int = 420,
              height: int = 230) -> str:
    """Lines over a numeric x axis (training step), one per series, with min/max labels on both axes."""
    pts_all = [(x, y) for s in series.values() for x, y in s if y is not None and np.isfinite(y)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="10"><rect width="100%" height="100%" fill="white"/>'
             f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>']
    if not pts_all:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#999">no data</text></svg>')
        return "".join(parts)
    xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    left, top, pw, ph = 56, 24, width - 70, height - 70

    def px(x):
        return left + pw * (x - x0) / (x1 - x0)

    def py(y):
        return top + ph * (y1 - y) / (y1 - y0)

    parts += [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
              f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_fmt(y1, 3)}</text>',
              f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">{_fmt(y0, 3)}</text>',
              f'<text x="{left}" y="{top + ph + 12}" text-anchor="middle">{_fmt(x0, 3)}</text>',
              f'<text x="{left + pw}" y="{top + ph + 12}" text-anchor="middle">{_fmt(x1, 3)}</text>',
              f'<text x="{left + pw / 2}" y="{top + ph + 24}" text-anchor="middle">{html.escape(xlabel)}</text>']
    for si, (name, pts) in enumerate(series.items()):
        c = COLORS[si % len(COLORS)]
        good = [(px(x), py(y)) for x, y in pts if y is not None and np.isfinite(y)]
        if len(good) > 1:
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in good) + '"/>')
        if len(good) <= 30:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{c}"/>' for a, b in good]
        parts.append(f'<rect x="{left + si * 150}" y="{height - 14}" width="10" height="10" fill="{c}"/>'
                     f'<text x="{left + si * 150 + 14}" y="{height - 5}">{html.escape(name[:24])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _gif_frames(frames, dest: Path, fps: float = 8.0, size: int = 128) -> Path:
    from PIL import Image

    imgs = [Image.fromarray(np.asarray(f)) for f in frames]
    for im in imgs:
        im.thumbnail((size, size))
    with atomic_path(dest) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return dest


def write_grid_thumbs(out: Path, scored: list[dict], hy: dict, dc: dict, rows: int = 3) -> list[dict]:
    """Animated thumbnails for the report's grid, one row per held-out clip: the clip, its reconstruction by
    the stage-1-3 autoencoder and by the Video DC-AE, and the sample of each model (trained and at init) for
    that clip's caption, seed index 0. Returns rows of (label, path relative to `out` or None)."""
    from soraflow.common.video_io import read_video

    grid = []
    by_prompt = {}
    for r in scored:
        if r.get("status") == "ok" and r.get("index") == 0:
            by_prompt.setdefault(r.get("prompt"), {})[r["model"]] = r["path"]
    captions = hy.get("captions") or []
    for i in range(min(rows, len(hy.get("frames") or []))):
        d = out / "thumbs" / "grid" / str(i)
        cells = [("held-out clip", _gif_frames(hy["frames"][i], d / "clip.gif")),
                 ("stage-1-3 autoencoder reconstruction", _gif_frames(hy["recons"][i], d / "recon_vae.gif"))]
        if dc.get("recons") and i < len(dc["recons"]):
            cells.append(("Video DC-AE reconstruction", _gif_frames(dc["recons"][i], d / "recon_dcae.gif")))
        caption = captions[i] if i < len(captions) else None
        for model in ("stage3", "stage3-init", "distilled", "distilled-init"):
            path = by_prompt.get(caption, {}).get(model) if caption else None
            gif = None
            if path:
                try:
                    frames, fps = read_video(path)
                    gif = _gif_frames(frames, d / f"{model}.gif", fps=min(fps or 8.0, 12.0))
                except Exception:  # noqa: BLE001 - the video's own error is listed in the errors table
                    gif = None
            cells.append((f"{model} sample", gif))
        grid.append({"caption": caption, "path": hy["paths"][i],
                     "cells": [(label, str(p.relative_to(out)) if p else None) for label, p in cells]})
    return grid


def _learning_plots(learning: dict) -> dict[str, str]:
    """Per-stage training-loss and held-out curves (SVG files)."""
    plots = {}
    for stage, c in learning.get("curves", {}).items():
        if c.get("losses"):
            plots[f"curve_{stage}_train"] = curve_svg(f"{stage}: training loss", {"train loss": [
                (float(x), float(y)) for x, y in c["losses"]]})
        held = c.get("heldout") or []
        if held:
            key = "fm_loss_mean" if held[0].get("fm_loss_mean") is not None else "psnr"
            label = "held-out flow-matching loss" if key == "fm_loss_mean" else "held-out PSNR (dB)"
            plots[f"curve_{stage}_heldout"] = curve_svg(f"{stage}: {label}", {label: [
                (float(e["step"]), e.get(key)) for e in held]})
    return plots


def _learning_html(learning: dict, plot_files: dict[str, str]) -> list[str]:
    e = html.escape
    h = ["<h2>Did it learn? (held-out checks)</h2>",
         f"<p><b>{'every gate passed' if learning.get('passed') else 'A GATE FAILED'}</b>"
         f"{'' if learning.get('targets_met') else ' (some quality targets are not met)'}: each trained model "
         "against the same network at initialisation, on clips it never trained on. Gates fail the run; targets "
         "are absolute quality bars.</p>",
         "<table><tr><th>check</th><th>value</th><th>kind</th><th>role</th><th>verdict</th><th>threshold</th>"
         "<th>note</th></tr>"]
    for c in learning.get("checks", []):
        v = c["value"]
        h.append(f"<tr><td>{e(c['check'])}</td><td>{e(_fmt(v) if not isinstance(v, bool) else str(v))}</td>"
                 f"<td>{e(c['kind'])}</td><td>{e(c.get('role', 'gate'))}</td>"
                 f"<td style='color:{'green' if c['passed'] else 'red'}'>"
                 f"{'PASS' if c['passed'] else 'FAIL'}</td><td>{e(c['threshold'])}</td><td>{e(c['note'])}</td></tr>")
    h.append("</table>")
    grid = learning.get("grid") or []
    if grid:
        labels = [label for label, _ in grid[0]["cells"]]
        h.append("<h2>Held-out clips, reconstructions and samples</h2><p>Each row: a held-out clip, its "
                 "reconstructions, and each model's sample for that clip's caption (same seed for trained and "
                 "init).</p><table><tr>" + "".join(f"<th>{e(x)}</th>" for x in labels) + "</tr>")
        for row in grid:
            h.append("<tr>" + "".join(f"<td><img src='{e(p)}' alt='{e(label)}'></td>" if p else
                                      "<td class='null'>n/a</td>" for label, p in row["cells"]) + "</tr>")
            h.append(f"<tr><td colspan='{len(labels)}' style='font-size:11px'>{e(row.get('caption') or '')}</td></tr>")
        h.append("</table>")
    if plot_files:
        h.append("<h2>Training curves</h2>")
        h += [f"<img src='{e(p)}' alt='{e(k)}'>" for k, p in plot_files.items()]
    return h


def _gif(path: str, dest: Path, size: int = 128) -> Path | None:
    from PIL import Image

    from soraflow.common.video_io import read_video

    try:
        frames, fps = read_video(path)
    except Exception:  # noqa: BLE001 - a thumbnail is optional; the video's error is already in the table
        return None
    imgs = [Image.fromarray(f) for f in frames]
    for im in imgs:
        im.thumbnail((size, size))
    with atomic_path(dest) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=int(1000 / (fps or 8)), loop=0)
    return dest


def _side_by_side(doc: dict) -> tuple[list[str], list[list[str]]]:
    names = list(doc["models"])
    rows = []
    first = doc["models"][names[0]] if names else {"proxy": {}}
    for k, v in first["proxy"].items():
        rows.append([f"proxy.{k}", v.get("kind", "")] + [_fmt(doc["models"][n]["proxy"][k]["value"]) for n in names])
    for k in ("quality_score", "semantic_score", "total_score"):
        rows.append([f"vbench.{k}", "vbench"] + [_fmt(doc["models"][n]["vbench"]["aggregates"][k]["value"])
                                                  for n in names])
    for k in ("psnr", "ssim"):
        rows.append([f"vae.{k}", "reference"] + [_fmt(doc["models"][n]["vae"].get(k)) for n in names])
    rows.append(["train.fm_val_loss_mean", "held-out"] + [_fmt(doc["models"][n]["train"].get("fm_val_loss_mean"))
                                                          for n in names])
    rows.append(["speed.seconds_per_video", "timing"] + [_fmt(doc["models"][n]["speed"].get("seconds_per_video"))
                                                         for n in names])
    rows.append(["speed.peak_memory_gb", "timing"] + [_fmt(doc["models"][n]["speed"].get("peak_memory_gb"))
                                                      for n in names])
    rows.append(["videos ok / total", ""] + [f'{doc["models"][n]["n_videos_ok"]}/{doc["models"][n]["n_videos"]}'
                                             for n in names])
    return ["metric", "kind"] + names, rows


def write_reports(doc: dict, out: Path, scored: list[dict], history: list[str], thumbnails: int = 4):
    """report.md and report.html (with plots/ and thumbs/ beside them) of an evaluation's metrics document."""
    names = list(doc["models"])
    plots = _plots(doc, names, out, history)
    plot_dir = out / "plots"
    for k, svg in plots.items():
        write_text_atomic(plot_dir / f"{k}.svg", svg)
    learning = doc.get("learning")
    learning_files = {}
    if learning:
        for k, svg in _learning_plots(learning).items():
            write_text_atomic(plot_dir / f"{k}.svg", svg)
            learning_files[k] = f"plots/{k}.svg"
    thumbs = _thumbnails(scored, out, thumbnails)
    header, rows = _side_by_side(doc) if names else (["metric"], [])
    errs = [(n, e) for n in names for e in doc["models"][n]["errors"]]
    md = _markdown(doc, names, header, rows, learning, errs, list(plots) + list(learning_files), thumbs)
    md_path = write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    h = _html(doc, names, md[1:3], header, rows, learning, learning_files, plots, errs, thumbs)
    html_path = write_text_atomic(out / "report.html", "\n".join(h))
    return md_path, html_path


def _plots(doc: dict, names: list[str], out: Path, history: list[str]) -> dict[str, str]:
    """name -> SVG: proxy metrics, VBench dimensions, VBench Total beside the published rows, trends."""
    plots: dict[str, str] = {}
    if not names:
        return plots
    first = doc["models"][names[0]]["proxy"]
    for k in first:
        plots[f"proxy_{k}"] = bar_svg(f"proxy.{k} ({first[k].get('kind')})", [k],
                                      {n: [doc["models"][n]["proxy"][k]["value"]] for n in names}, width=260)
    vb_dims = [d for d, v in doc["models"][names[0]]["vbench"]["dimensions"].items()]
    if any(doc["models"][n]["vbench"]["dimensions"][d]["normalized"] is not None for n in names for d in vb_dims):
        plots["vbench_dimensions"] = bar_svg("VBench normalised dimensions", vb_dims,
                                             {n: [doc["models"][n]["vbench"]["dimensions"][d]["normalized"]
                                                  for d in vb_dims] for n in names}, width=900)
    ours = {n: doc["models"][n]["vbench"]["aggregates"]["total_score"]["value"] for n in names}
    if any(v is not None for v in ours.values()):
        labels = [p[0] for p in PUBLISHED] + [n for n, v in ours.items() if v is not None]
        vals = [p[1] for p in PUBLISHED] + [100 * v for v in ours.values() if v is not None]
        plots["vbench_total_vs_published"] = bar_svg("VBench Total (%) vs published rows",
                                                     labels, {"Total %": vals}, width=1000)
    if history:
        runs = []
        for h in history:
            try:
                runs.append((Path(h).parent.name, json.loads(Path(h).read_text())))
            except (OSError, json.JSONDecodeError):
                continue
        runs.append((out.name + " (this run)", doc))
        for k in ("subject_consistency_ssim", "dynamic_degree_dis", "imaging_sharpness"):
            plots[f"trend_{k}"] = line_svg(f"trend: proxy.{k}", [r[0] for r in runs],
                                           {n: [r[1]["models"].get(n, {}).get("proxy", {}).get(k, {}).get("value")
                                                for r in runs] for n in names})
    return plots


def _thumbnails(scored: list[dict], out: Path, thumbnails: int) -> list[tuple]:
    """(model, prompt, GIF path relative to `out`) of the first sample of up to `thumbnails` prompts."""
    thumbs = []
    seen_prompts: dict[str, int] = {}
    for r in scored:
        if r.get("status") != "ok" or r.get("index") not in (0, None):
            continue
        p = r.get("prompt", "")
        if p not in seen_prompts and len(seen_prompts) >= thumbnails:
            continue
        seen_prompts.setdefault(p, len(seen_prompts))
        g = _gif(r["path"], out / "thumbs" / r["model"] / f"{seen_prompts[p]}.gif")
        if g:
            thumbs.append((r["model"], p, g.relative_to(out)))

    return thumbs


def _markdown(doc, names, header, rows, learning, errs, plot_names, thumbs) -> list[str]:
    run = doc["run"]
    md = [f"# Evaluation report\n",
          f"Suite `{run['suite']['name']}` ({run['suite']['n_prompts']} prompts, source {run['suite']['source']}), "
          f"seeds {run['seeds']}, {run['num_frames']} frames, resolution {run['resolution']} "
          f"({run['height']}x{run['width']} if set), {run['steps']} steps, git {run['git_sha']}.\n",
          "Kinds: `vbench` = VBench's own definition (the real VBench where its weights are mounted; temporal "
          "flickering needs none and is computed here); `proxy` = VBench's "
          "rule on a weight-free stand-in (not comparable to VBench numbers); `image-statistic` = no-reference "
          "statistics (direction only); `reference` = against held-out clips.\n",
          "## Side by side\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    if learning:
        md.insert(3, "## Did it learn? (held-out checks)\n\n| check | value | kind | role | verdict | threshold |\n"
                     "|---|---|---|---|---|---|\n" + "\n".join(
                         f"| {c['check']} | {_fmt(c['value'])} | {c['kind']} | {c.get('role', 'gate')} | "
                         f"{'PASS' if c['passed'] else 'FAIL'} | {c['threshold']} |" for c in learning["checks"])
                     + "\n")
    md.append("\n## VBench dimensions\n")
    for n in names:
        md.append(f"### {n}\n\n| dimension | raw | normalised | note |\n|---|---|---|---|")
        for d, v in doc["models"][n]["vbench"]["dimensions"].items():
            md.append(f"| {d} | {_fmt(v['raw'])} | {_fmt(v['normalized'])} | "
                      f"{(v.get('reason') or v.get('source') or '')[:160].replace('|', '/')} |")
        for k, v in doc["models"][n]["vbench"]["aggregates"].items():
            miss = f" (missing: {', '.join(v['missing'])})" if v["missing"] else ""
            md.append(f"\n{k}: {_fmt(v['value'])}{miss}")
        md.append("")
    md.append("## Held-out flow-matching loss by timestep\n")
    for n in names:
        fm = doc["models"][n]["train"].get("fm_val_loss")
        md.append(f"- {n}: " + (", ".join(f"t={t}: {_fmt(v)}" for t, v in fm.items()) if fm else
                                 f"null ({doc['models'][n]['train'].get('reason')})"))
    md.append("\n## Errors (per video / clip)\n")
    md += [f"- {n}: `{e.get('path')}`: {e.get('error')}" for n, e in errs] or ["none"]
    md.append("\n## Plots\n")
    md += [f"![{k}](plots/{k}.svg)" for k in plot_names]
    md.append("\n## Samples\n")
    md += [f"- {m}: {html.escape(p)}\n\n  ![{m}]({g})" for m, p, g in thumbs]
    return md


def _html(doc, names, intro, header, rows, learning, learning_files, plots, errs, thumbs) -> list[str]:
    e = html.escape
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>soraflow eval</title><style>"
         "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.null{color:#999}</style></head><body>",
         f"<h1>Evaluation report</h1><p>{e(intro[0])}</p><p>{e(intro[1])}</p>"]
    if learning:
        h += _learning_html(learning, learning_files)
    h.append("<h2>Side by side</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>")
    h += ["<tr>" + "".join(f"<td class='{'null' if c == 'null' else ''}'>{e(c)}</td>" for c in r) + "</tr>"
          for r in rows]
    h.append("</table><h2>Plots</h2>")
    h += [svg for svg in plots.values()]
    h.append("<h2>VBench dimensions</h2>")
    for n in names:
        h.append(f"<h3>{e(n)}</h3><table><tr><th>dimension</th><th>raw</th><th>normalised</th><th>note</th></tr>")
        for d, v in doc["models"][n]["vbench"]["dimensions"].items():
            h.append(f"<tr><td>{d}</td><td>{_fmt(v['raw'])}</td><td>{_fmt(v['normalized'])}</td>"
                     f"<td>{e((v.get('reason') or v.get('source') or '')[:200])}</td></tr>")
        h.append("</table>")
    h.append("<h2>Errors</h2><ul>" + ("".join(f"<li>{e(n)}: {e(str(x.get('path')))}: {e(str(x.get('error')))}</li>"
                                            for n, x in errs) or "<li>none</li>") + "</ul>")
    h.append("<h2>Samples</h2>" + "".join(f"<figure style='display:inline-block'><img src='{g}'><figcaption>"
                                         f"{e(m)}: {e(p[:40])}</figcaption></figure>" for m, p, g in thumbs))
    h.append("</body></html>")
    return h
