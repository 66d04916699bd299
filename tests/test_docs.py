"""The manual stays true to the code: docs/configuration.md is what scripts/config_doc.py writes from ``Settings`` now,
and every relative link in README.md and docs/ leads to a file (and heading) of this repository."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"""!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)""")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def _config_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_doc", ROOT / "scripts" / "config_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text: str) -> str:
    """``text`` without its code blocks and code spans, where brackets and parentheses are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return [*INLINE_LINK.findall(prose), *REFERENCE.findall(prose), *HTML_LINK.findall(prose)]


def anchors(page: Path) -> set[str]:
    """The ids GitHub gives the headings of ``page`` (lower case, punctuation dropped, spaces to hyphens, -1 -2 for
    repeats)."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def test_configuration_page_is_generated_from_the_settings() -> None:
    page = ROOT / "docs" / "configuration.md"
    expected = _config_doc().render()  # also fails, naming it, on a setting without a description
    assert page.exists(), "docs/configuration.md is missing: run `make docs`"
    assert page.read_text() == expected, "docs/configuration.md is out of date with Settings: run `make docs`"


def test_configuration_page_has_a_row_for_every_setting() -> None:
    from mlops_lab.settings import Settings

    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"| `LAB_{name.upper()}` |" in text, f"LAB_{name.upper()} is not in docs/configuration.md"


def test_link_finder_sees_links_and_skips_code() -> None:
    text = (
        "See [the manual](docs/README.md#using) and ![a chart](docs/chart.png 'title').\n"
        "[ref]: docs/aws.md\n"
        "`[not](a-link.md)` and\n```\n[nor](this.md)\n```\n"
        '<a href="docs/api.md">API</a> [web](https://example.com)\n'
    )
    assert links(text) == [
        "docs/README.md#using",
        "docs/chart.png",
        "https://example.com",
        "docs/aws.md",
        "docs/api.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_relative_links_lead_to_files_in_the_repository(page: Path) -> None:
    problems = []
    for target in links(page.read_text()):
        if EXTERNAL.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        if "../shared" in path_part:
            problems.append(f"{target}: ../shared is not part of a clone")
            continue
        if not path_part:  # a heading of this page
            destination = page
        elif path_part.startswith("/"):  # GitHub resolves these from the repository's root
            destination = (ROOT / path_part.lstrip("/")).resolve()
        else:
            destination = (page.parent / path_part).resolve()
        if not destination.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not destination.exists():
            problems.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment.lower() not in anchors(destination):
            problems.append(f"{target}: no heading #{fragment} in {destination.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_manual_has_an_index_that_links_every_page() -> None:
    index = ROOT / "docs" / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for target in links(index.read_text())}
    unlisted = [page.name for page in PAGES if page.parent == index.parent and page != index and page not in listed]
    assert not unlisted, f"docs/README.md does not link {', '.join(unlisted)}"
