"""The repository explains itself: every ``docs/<page>.md#<anchor>`` that code, tests or docs cite
exists as a heading of that page, and nothing cites documents outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# "docs/reference.md#a" and the further anchors of a list: "docs/reference.md#a, #b, #c"
CITATION = re.compile(r"docs/(?P<page>[\w/-]+)\.md#(?P<first>[\w-]+)(?P<more>(?:,\s*#[\w-]+)*)")
# in-page links of the docs themselves: "](#anchor)" and "](page.md#anchor)"
LINK = re.compile(r"\]\((?P<page>[\w/-]+\.md)?#(?P<anchor>[\w-]+)\)")
# The design notes and specs the code was first written from live outside the repository.
OUTSIDE = re.compile(r"DESIGN(\.md)? §|spec/(model|deploy)\.md|\bspec §")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            found.add(github_anchor(m.group(1)))
    return found


def _sources() -> list[Path]:
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *DOCS.rglob("*.md"),
             ROOT / "README.md"]
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def test_github_anchor_rule():
    assert github_anchor("ResNet-50 backbone") == "resnet-50-backbone"
    assert github_anchor("Sources, detector, sinks") == "sources-detector-sinks"
    assert github_anchor("Part 1: the original network") == "part-1-the-original-network"


def test_every_cited_anchor_exists():
    known = {p.relative_to(DOCS).with_suffix("").as_posix(): anchors(p) for p in DOCS.rglob("*.md")}
    missing = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for m in CITATION.finditer(text):
            cited = [m.group("first"), *re.findall(r"#([\w-]+)", m.group("more"))]
            page = m.group("page")
            for anchor in cited:
                if anchor not in known.get(page, set()):
                    line = text.count("\n", 0, m.start()) + 1
                    missing.append(f"{path.relative_to(ROOT)}:{line}: docs/{page}.md#{anchor}")
        if path.suffix == ".md" and path.is_relative_to(DOCS):
            here = path.relative_to(DOCS).with_suffix("").as_posix()
            for m in LINK.finditer(text):
                page = (Path(here).parent / m.group("page")).with_suffix("").as_posix() \
                    if m.group("page") else here
                if m.group("anchor") not in known.get(page, set()):
                    missing.append(f"{path.relative_to(ROOT)}: link to {page}.md#{m.group('anchor')}")
    assert not missing, "anchors cited but not defined:\n" + "\n".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    outside = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
               for p in _sources() if p.suffix == ".py"
               for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
               if OUTSIDE.search(line)]
    assert not outside, "cite docs/reference.md or docs/architecture.md instead:\n" + \
        "\n".join(outside)
