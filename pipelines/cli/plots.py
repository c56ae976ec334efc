"""DVC's plots as static files that open offline.

`dvc plots show` writes an HTML page that fetches vega, vega-lite and vega-embed from a CDN, so
it is blank on a machine without internet. Here DVC still does the work it is good at (reading
`plots:` from dvc.yaml, filling each Vega-Lite template with the data) through
`dvc plots show --json`, and vl-convert, which embeds the Vega engine in its wheel, renders each
spec to SVG and PNG with no network. index.html references only those local files.

    python -m pipelines.plots_offline [--root .] [--out plots/]
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines import io

# XML namespace names look like URLs but are identifiers, never fetched.
_NAMESPACES = ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", "http://www.w3.org/1999/xhtml")


def dvc_plots_json(root: Path) -> dict:
    """`dvc plots show --json` in root: {"data": {plot id: [entries]}, "errors": [...]}."""
    # Outside a DVC repository dvc prints {} and exits 0: say what is wrong instead of an empty page.
    if not (root / "dvc.yaml").exists():
        raise RuntimeError(f"{root / 'dvc.yaml'} not found: run from the repository root or pass --root")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc plots show --json failed in {root} (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"dvc plots show --json in {root} did not print JSON ({e}): {proc.stdout[:300]!r}")


def remote_references(text: str) -> list[str]:
    """Every http(s) URL in text except XML namespace names: what a browser could try to fetch."""
    urls = re.findall(r"https?://[^\s\"'<>)]+", text)
    return [u for u in urls if u not in _NAMESPACES]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "plot"


def _title(spec: dict, fallback: str) -> str:
    t = spec.get("title")
    if isinstance(t, dict):
        t = t.get("text")
    return str(t) if t else fallback


def render(root: Path, out: Path, scale: float = 2.0) -> dict:
    """Render every plot DVC defines in root into out/. Returns {"plots": [...], "errors": [...]}."""
    import vl_convert as vlc

    shown = dvc_plots_json(root)
    errors = [f"{e.get('name')}: {e.get('source', '')}: {e.get('msg', e.get('type', ''))}"
              for e in shown.get("errors", [])]
    out.mkdir(parents=True, exist_ok=True)
    rendered = []
    for i, (plot_id, entries) in enumerate(shown.get("data", {}).items(), 1):
        if not entries:
            continue  # nothing loaded (the files are missing): already listed in errors
        for j, entry in enumerate(entries):
            stem = f"{i:02d}-{_slug(plot_id)}" + (f"-{j}" if len(entries) > 1 else "")
            if entry.get("type") == "vega":
                spec = entry["content"]
                svg = vlc.vegalite_to_svg(spec)
                if remote_references(svg):
                    raise RuntimeError(f"{plot_id}: rendered SVG references {remote_references(svg)[:3]}")
                io.write_text(out / f"{stem}.svg", svg)
                io.write_bytes(out / f"{stem}.png", vlc.vegalite_to_png(spec, scale=scale))
                rendered.append({"id": plot_id, "title": _title(spec, plot_id), "svg": f"{stem}.svg",
                                 "png": f"{stem}.png", "revisions": entry.get("revisions", [])})
            elif entry.get("type") == "image":
                # Image plots are files already; copy them so the folder stands alone.
                src = Path(entry["url"])
                src = src if src.is_absolute() else root / src
                dst = out / f"{stem}{src.suffix}"
                shutil.copyfile(src, dst)
                rendered.append({"id": plot_id, "title": plot_id, "svg": None, "png": dst.name,
                                 "revisions": entry.get("revisions", [])})
            else:
                errors.append(f"{plot_id}: plot type {entry.get('type')!r} is not rendered offline")
    page = _index(rendered, errors)
    if remote_references(page):
        raise RuntimeError(f"index.html would reference {remote_references(page)[:3]}")
    io.write_text(out / "index.html", page)
    return {"plots": rendered, "errors": errors}


def _index(plots: list[dict], errors: list[str]) -> str:
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8"><title>DVC plots</title>',
             "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:1em;"
             "vertical-align:top}img{max-width:100%}</style></head><body>", "<h1>DVC plots</h1>"]
    for p in plots:
        img = p["svg"] or p["png"]
        links = f'<a href="{html.escape(p["png"])}">PNG</a>' if p["svg"] else ""
        parts.append(f'<figure><img src="{html.escape(img)}" alt="{html.escape(p["title"])}">'
                     f'<figcaption>{html.escape(p["id"])} {links}</figcaption></figure>')
    if not plots:
        parts.append("<p>No plot had data: run the pipeline first (dvc repro).</p>")
    if errors:
        parts.append("<h2>Not rendered</h2><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in errors) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="repository root holding dvc.yaml")
    ap.add_argument("--out", type=Path, default=Path("plots"), help="folder for the SVG/PNG files and index.html")
    ap.add_argument("--scale", type=float, default=2.0, help="PNG pixel scale")
    a = ap.parse_args(argv)
    try:
        res = render(a.root.resolve(), a.out, a.scale)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for e in res["errors"]:
        print(f"not rendered: {e}", file=sys.stderr)
    print(f"{len(res['plots'])} plot(s) -> {a.out / 'index.html'}")
    return 0 if res["plots"] else 1


if __name__ == "__main__":
    sys.exit(main())
