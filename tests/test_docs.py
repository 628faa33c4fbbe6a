"""Every relative link in README.md and docs/ resolves: the file exists and, where the link names a
heading (``#anchor``), the file has that heading. The benchmarks page and the experiment record link
into each other by hundreds of anchors; a moved or renamed section breaks them silently otherwise."""
import os
import re
from typing import Iterator, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.*?) *$")


def markdown_files() -> List[str]:
    files = [os.path.join(ROOT, "README.md")]
    for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
        files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".md")]
    return files


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: str) -> Set[str]:
    seen, out, fenced = {}, set(), False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                fenced = not fenced
            match = None if fenced else HEADING.match(line)
            if match:
                slug = anchor(match.group(1))
                count = seen.get(slug, 0)
                out.add(slug if count == 0 else f"{slug}-{count}")  # GitHub numbers repeated headings
                seen[slug] = count + 1
    return out


def relative_links(path: str) -> Iterator[Tuple[int, str]]:
    fenced = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("```"):
                fenced = not fenced
            if not fenced:
                for target in LINK.findall(line):
                    if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                        yield number, target


def broken_links(files: List[str]) -> List[str]:
    broken = []
    for path in files:
        for number, target in relative_links(path):
            file_part, _, fragment = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            where = f"{os.path.relpath(path, ROOT)}:{number} -> {target}"
            if not os.path.exists(linked):
                broken.append(f"{where} (no such file)")
            elif fragment and linked.endswith(".md") and fragment not in anchors(linked):
                broken.append(f"{where} (no such heading)")
    return broken


def test_every_relative_link_resolves():
    assert broken_links(markdown_files()) == []


@pytest.mark.parametrize("target, problem", [("missing.md", "no such file"), ("#no-such-heading", "no such heading"),
                                             ("other.md#nowhere", "no such heading")])
def test_a_broken_link_is_found(tmp_path, target, problem):
    (tmp_path / "other.md").write_text("# A heading: with (punctuation) \u2014 and a dash\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(f"# Page\n[fine](other.md#a-heading-with-punctuation--and-a-dash) [bad]({target})\n",
                    encoding="utf-8")
    (found,) = broken_links([str(page)])
    assert problem in found and target in found
