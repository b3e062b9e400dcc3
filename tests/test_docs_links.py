"""Every relative link in README.md and docs/*.md reaches a file that exists, and every `#anchor`
names a heading of the file it points into (GitHub's heading slugs)."""
import functools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation other than '-' and '_' dropped,
  spaces to '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # each linked page is read once, however many links point into it
def headings(page: pathlib.Path) -> frozenset[str]:
  found, fenced = set(), False
  for line in page.read_text().splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced and re.match(r"#+ ", line):
      found.add(slug(re.sub(r"^#+ ", "", line)))
  return frozenset(found)


def broken_links(page: pathlib.Path) -> list[str]:
  broken = []
  for number, line in enumerate(page.read_text().splitlines(), 1):
    for target in LINK.findall(line):
      if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      linked = (page.parent / path) if path else page
      if not linked.exists():
        broken.append(f"{page.name}:{number}: {target}: no such file")
      elif anchor and linked.suffix == ".md" and anchor not in headings(linked):
        broken.append(f"{page.name}:{number}: {target}: no heading #{anchor} in {linked.name}")
  return broken


def test_slug_matches_github():
  assert slug("The `make demo` run") == "the-make-demo-run"
  assert slug("Against transformers, step for step (2026-12-04)") == "against-transformers-step-for-step-2026-12-04"


def test_a_broken_link_is_found(tmp_path):
  (tmp_path / "other.md").write_text("# Real heading\n")
  page = tmp_path / "page.md"
  page.write_text("[ok](other.md#real-heading) [gone](missing.md)\n[bad](other.md#nope) [web](https://x.org/#y)\n")
  assert broken_links(page) == ["page.md:1: missing.md: no such file",
                                "page.md:2: other.md#nope: no heading #nope in other.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
  assert broken_links(page) == []
