"""Every committed report and doc (each .md and .html under examples/ and docs/, and the README) links only to
files the repository holds: Markdown links and images, reference definitions, <a href> and <img src>. A link to
the web (http, https, mailto), an embedded image (data:) or an anchor on the same page is not checked; a link
into a folder is fine where the repository holds files under it.

"The repository" is what git would commit: tracked files and untracked ones that no .gitignore drops, so a
report linking to a file that .gitignore keeps out fails here before it is committed."""

import os
import re
import subprocess
from urllib.parse import unquote

import pytest

from conftest import ROOT

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
MD_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#|//)", re.I)  # http:, https:, mailto:, data:, an anchor


def _repo_files() -> set[str]:
    try:
        r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    except OSError:
        r = None
    if r is None or r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("the link check needs git and the repository's .git")
        pytest.skip("not a git checkout: no way to tell which files the repository holds")
    return {f for f in r.stdout.splitlines() if os.path.exists(os.path.join(ROOT, f))}


def targets(text: str, html: bool) -> list[str]:
    """The link and image targets of a page (Markdown pages: outside code blocks and code spans)."""
    found = [a or b for a, b in HTML_LINK.findall(text)]
    if not html:
        unfenced = FENCE.sub("", text)
        found += MD_LINK.findall(CODE.sub("", unfenced)) + MD_DEFINITION.findall(unfenced)
    return [t for t in found if t and not EXTERNAL.match(t)]


def _resolves(page: str, target: str, files: set[str], folders: set[str]) -> bool:
    path = unquote(target.split("#")[0].split("?")[0])
    if not path:
        return True
    if path.startswith("/"):
        return False  # an absolute path names a file of one machine, not of the repository
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)).replace(os.sep, "/")
    return full in files or full.rstrip("/") in folders


def _pages(files: set[str]) -> list[str]:
    return sorted(f for f in files if f.endswith((".md", ".html"))
                  and (f.startswith(("examples/", "docs/")) or "/" not in f))


def test_targets_are_found_in_markdown_and_html():
    md = ("See [a](docs/a.md#part), ![plot](p.png \"title\") and [web](https://x.org).\n"
          "```\n[not a link](inside/code.md)\n```\n`[nor](this.md)` [ref]: ref/def.md\n[ref2]: ref/two.md\n")
    assert targets(md, html=False) == ["docs/a.md#part", "p.png", "ref/two.md"]
    html = "<a href=\"b/report.html\">b</a><img src='x.png'><img src=\"data:image/png;base64,AAA\"><a href='#top'>"
    assert targets(html, html=True) == ["b/report.html", "x.png"]
    files, folders = {"docs/a.md", "docs/p.png"}, {"docs"}
    assert _resolves("docs/x.md", "a.md#part", files, folders) and _resolves("README.md", "docs/", files, folders)
    assert not _resolves("docs/x.md", "missing.png", files, folders)
    assert not _resolves("docs/x.md", "/work/docs/a.md", files, folders)


def test_every_link_in_every_committed_report_resolves():
    files = _repo_files()
    folders = {os.path.dirname(f) for f in files}
    folders |= {p for f in folders for p in [f] + [f.rsplit("/", k)[0] for k in range(1, f.count("/") + 1)]}
    pages = _pages(files)
    assert "README.md" in pages and any(p.startswith("examples/") and p.endswith("report.html") for p in pages)
    broken = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            text = f.read()
        broken += [f"{page}: {t}" for t in targets(text, page.endswith(".html"))
                   if not _resolves(page, t, files, folders)]
    assert not broken, "links to files the repository does not hold:\n" + "\n".join(broken)
