"""A report page as (kind, content) blocks, rendered once as Markdown and once as a self-contained HTML page
(images inlined as base64): compare's report.py and the quantisation lab's report use it alike.

Blocks: ("h1"|"h2", text), ("p", text), ("table", (header, rows, source rows or None)), ("img", (caption, path)),
("samples", [(instruction, reference, [(run, prediction)])]). A paragraph's Markdown links [text](target) are
links in the HTML page too, to the HTML form of a linked report.md (every report is written in both forms).
"""

from __future__ import annotations

import base64
import html
import os
import re

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def md_cell(v):
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(blocks) -> str:
    md = []
    for kind, c in blocks:
        if kind in ("h1", "h2"):
            md += [("# " if kind == "h1" else "## ") + c, ""]
        elif kind == "p":
            md += [c, ""]
        elif kind == "table":
            header, rows, _ = c
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows] + [""]
        elif kind == "img":
            md += [f"![{c[0]}]({os.path.basename(c[1])})", ""]
        elif kind == "samples":
            md += ["## Sample generations", ""]
            for instr, ref, preds in c:
                md += [f"**Instruction:** {md_cell(instr)}", ""] + ([f"- *reference*: {md_cell(ref)}"] if ref else [])
                md += [f"- **{name}**: {md_cell(p) or '(empty)'}" for name, p in preds] + [""]
    return "\n".join(md) + "\n"


def _html_link(m) -> str:
    target = m.group(2)
    if target.endswith("report.md"):
        target = target[:-len(".md")] + ".html"
    return f'<a href="{target}">{m.group(1)}</a>'


def html_page(blocks, title) -> str:
    e = html.escape
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>" + e(title) + "</title>",
         "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px;"
         "margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+3),th"
         "{text-align:left}.failed{background:#fde0e0}.base{background:#eef3fb}</style></head><body>"]
    for kind, c in blocks:
        if kind in ("h1", "h2"):
            h.append(f"<{kind}>{e(c)}</{kind}>")
        elif kind == "p":
            h.append(f"<p>{_LINK.sub(_html_link, e(c).replace('**', ''))}</p>")
        elif kind == "table":
            header, rows, source = c
            h.append("<table><tr>" + "".join(f"<th>{e(x)}</th>" for x in header) + "</tr>")
            for i, row in enumerate(rows):
                r = source[i] if source else {}
                cls = " class='failed'" if r.get("status") == "failed" else (" class='base'" if r.get("name") == "base" else "")
                h.append(f"<tr{cls}>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
            h.append("</table>")
        elif kind == "img":
            with open(c[1], "rb") as f:
                data = base64.b64encode(f.read()).decode()
            h.append(f"<h3>{e(c[0])}</h3><img src=\"data:image/png;base64,{data}\" style=\"max-width:100%\">")
        elif kind == "samples":
            h.append("<h2>Sample generations</h2>")
            for instr, ref, preds in c:
                h.append(f"<h3>{e(instr)}</h3><ul>" + (f"<li><i>reference</i>: {e(ref)}</li>" if ref else "")
                         + "".join(f"<li><b>{e(n)}</b>: {e(p) or '(empty)'}</li>" for n, p in preds) + "</ul>")
    h.append("</body></html>")
    return "\n".join(h)
