"""The README and the pages under docs/ link to each other: every relative link must reach a file that exists and,
where it names a `#anchor`, a heading of that file whose GitHub slug is the anchor; every image must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\s[^>]*?(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation other than - and _ removed, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading contributes its text
    text = re.sub(r"<[^>]+>", "", text)  # and inline HTML nothing
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown page's headings (outside code blocks); repeated slugs get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[tuple[str, bool]]:
    """(target, is_image) of every markdown link and image, and every HTML src/href, outside code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    found = [(m.group(2), m.group(1) == "!") for m in LINK.finditer(prose)]
    found += [(m.group(1), True) for m in HTML_SRC.finditer(prose)]
    return found


def broken_links(page: Path) -> list[str]:
    """What is wrong with the relative links of one page: missing files, missing images, unknown anchors."""
    problems = []
    for target, is_image in links(page.read_text()):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        kind = "image" if is_image else "link"
        if not dest.exists():
            problems.append(f"{page.name}: {kind} {target!r}: {path_part} does not exist")
            continue
        if anchor and dest.suffix == ".md":
            if anchor not in anchors(dest.read_text()):
                problems.append(f"{page.name}: link {target!r}: no heading of {dest.name} has the anchor #{anchor}")
    return problems


def test_docs_slug_follows_github():
    assert slug("Reproducing the paper's tables") == "reproducing-the-papers-tables"
    assert slug("1. Sub-FM construction — `sub_model_construct/distill.py`") == (
        "1-sub-fm-construction--sub_model_constructdistillpy"
    )
    assert slug("Flower: the same rounds across real machines") == "flower-the-same-rounds-across-real-machines"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### B *c*\n") == {"a", "a-1", "b-c"}


def test_docs_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Its section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#its-section) [ok too](#page) [also](https://example.org/x#y)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [bad here](#nowhere) ![img](pic.png)\n"
        "`[in code](missing-too.md)`\n\n```\n[in a block](missing-three.md)\n```\n"
        "[a link whose text\nspans lines](other.md#other-page)\n"
    )
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert any("missing.md does not exist" in p for p in problems)
    assert any("#nope" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
    assert any("image 'pic.png'" in p for p in problems)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_docs_links_resolve(page):
    """Every relative link and image of README.md and docs/*.md reaches an existing file and heading."""
    assert broken_links(page) == []
