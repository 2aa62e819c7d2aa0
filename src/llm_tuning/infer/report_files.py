"""The compare reports `llm-tuning serve --reports DIR` serves under /reports/: the list of reports, and any file
inside that folder (never one outside it, whatever the path, `..` or symbolic link, says).

A 404 is an HTTPException, which the server answers in OpenAI's error shape like any other (serve.py).
"""

from __future__ import annotations

import os
import re


def report_routes(app, reports: str | None):
    """compare reports: /reports/index.json lists them, /reports/PATH serves a file under the reports folder."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    root = os.path.realpath(reports) if reports else None

    @app.get("/reports/index.json")
    async def report_index():
        return {"root": bool(root), "reports": list_reports(root) if root else []}

    @app.get("/reports/{path:path}")
    async def report_file(path: str):
        if not root:
            raise HTTPException(404, "no reports folder: start the server with --reports DIR")
        full = report_path(root, path)
        if full is None:
            raise HTTPException(404, "no such report file inside the reports folder")
        return FileResponse(full)


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def report_path(root: str, path: str) -> str | None:
    """The file `path` names under `root` (a folder: its report.html), resolved after its last component is
    joined (symbolic links, `..`, absolute paths), or None when that is not a file inside `root`."""
    if "\0" in path:
        return None
    full = os.path.realpath(os.path.join(root, path))
    if os.path.isdir(full):
        full = os.path.realpath(os.path.join(full, "report.html"))
    return full if _inside(root, full) and os.path.isfile(full) else None


def list_reports(root: str, depth: int = 3) -> list[dict]:
    """Folders under `root` (at most `depth` levels down) holding a compare report.html, with their titles."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel.count(os.sep) >= depth:
            dirs[:] = []
        dirs.sort()
        page = os.path.realpath(os.path.join(folder, "report.html"))
        if "report.html" in files and _inside(root, page):  # a link to a file elsewhere is not listed
            with open(page, encoding="utf-8", errors="replace") as f:
                m = re.search(r"<title>(.*?)</title>", f.read(4096), re.S)
            found.append({"path": "" if rel == "." else rel.replace(os.sep, "/"),
                          "title": m.group(1).strip() if m else rel})
    return found
