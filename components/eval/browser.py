"""Open a report in headless Chromium and list which of its images did not load (Debian's `chromium`).

A small page is written next to the report: it loads the report in an iframe (same folder, so the same origin
under --allow-file-access-from-files) and, once it has loaded, writes each <img>'s source, `complete` and
`naturalWidth` into its own DOM, which `--dump-dom` prints. No browser-driver dependency; the browser is the
distribution's binary, started with a fresh profile and no network services.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--allow-file-access-from-files", "--virtual-time-budget=15000"]

_PROBE = """<!doctype html><html><head><meta charset="utf-8"></head><body><pre id="result">pending</pre>
<iframe id="r" src="{src}" width="1200" height="800"></iframe>
<script>
document.getElementById("r").addEventListener("load", function () {{
  var d = this.contentDocument;
  var imgs = Array.prototype.slice.call(d.images).map(function (i) {{
    return {{src: i.getAttribute("src"), complete: i.complete, naturalWidth: i.naturalWidth}};
  }});
  var svgs = d.querySelectorAll("svg").length;
  document.getElementById("result").textContent = JSON.stringify({{images: imgs, inline_svgs: svgs}});
}});
</script></body></html>"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def report_images(report_html: str | Path, timeout: float = 120.0) -> dict:
    """{"images": [{src, complete, naturalWidth}], "inline_svgs": n, "broken": [src, ...]} for a report."""
    report = Path(report_html).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no such report")
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    probe = report.parent / f".probe-{report.stem}.html"
    probe.write_text(_PROBE.format(src=report.name), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="soraflow-chromium-") as profile:
            proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                   probe.as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if not m or m.group(1).strip() == "pending":
        raise RuntimeError(f"chromium did not load {report} (rc {proc.returncode}): {proc.stderr[-800:]}")
    import html

    doc = json.loads(html.unescape(m.group(1)))
    doc["broken"] = [i["src"] for i in doc["images"] if not i["complete"] or not i["naturalWidth"]]
    return doc
