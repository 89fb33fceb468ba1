"""Every reference in the docs, README and docstrings resolves: "docs/x.md §N" names a file that
ships and a numbered section it has; cited paths exist; the design notes outside the repository
(MATH.md, API.md, ARCHITECTURE.md) are never cited."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "daggrow").rglob("*.py"),
                  *(ROOT / "tests").rglob("*.py"), *(ROOT / "examples").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
SOURCES = [p for p in SOURCES if p.name != "test_docs_references.py"]
DOC_REF = re.compile(r"docs/([\w-]+\.md)`?((?:\s*(?:,|and|–|-|to)?\s*§\d+[a-z]?)*)")
PATH_REF = re.compile(r"`((?:daggrow|tests|docs|examples|benchmarks)/[\w./-]*[\w/])`")
OUTSIDE = re.compile(r"\b(MATH|API|ARCHITECTURE)\.md\b|\bMATH §|shared/design")


def _text(path: Path) -> str:
    """The file with whitespace runs (line breaks, comment indents) made single spaces."""
    return re.sub(r"\s+#?\s*", " ", path.read_text(encoding="utf-8"))


def sections(doc: Path) -> set[str]:
    """Numbers of a doc's numbered headings: "## 4. ..." → "4", "### 4b. ..." → "4b"."""
    return set(re.findall(r"^#+ (\d+[a-z]?)\.\s", doc.read_text(encoding="utf-8"), re.M))


def references() -> list[tuple[Path, str, list[str]]]:
    return [(p, m[1], re.findall(r"§(\d+[a-z]?)", m[2])) for p in SOURCES for m in DOC_REF.finditer(_text(p))]


def test_there_are_references_to_check():
    cited = {doc for _, doc, numbers in references() if numbers}
    assert {"math.md", "api.md", "results.md"} <= cited


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_references_resolve(source):
    for path, doc, numbers in references():
        if path != source:
            continue
        target = ROOT / "docs" / doc
        assert target.is_file(), f"{source.relative_to(ROOT)} cites docs/{doc}, which does not exist"
        missing = set(numbers) - sections(target)
        assert not missing, f"{source.relative_to(ROOT)} cites docs/{doc} §{', §'.join(sorted(missing))}: no such section"


@pytest.mark.parametrize("source", [p for p in SOURCES if p.suffix == ".md"], ids=lambda p: p.name)
def test_cited_paths_exist(source):
    for cited in PATH_REF.findall(source.read_text(encoding="utf-8")):
        assert (ROOT / cited).exists(), f"{source.relative_to(ROOT)} cites `{cited}`, which does not exist"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_repository_is_cited(source):
    found = OUTSIDE.search(source.read_text(encoding="utf-8"))
    assert found is None, f"{source.relative_to(ROOT)} cites {found[0]!r}: cite docs/math.md or docs/api.md instead"


def test_the_checker_catches_bad_references(tmp_path):
    assert "99" not in sections(ROOT / "docs" / "math.md") and "5" in sections(ROOT / "docs" / "math.md")
    bad = tmp_path / "bad.py"
    bad.write_text('"""See docs/math.md §99 and docs/nothing.md §1, and MATH §3."""')
    refs = [(doc, numbers) for doc, numbers in
            ((m[1], re.findall(r"§(\d+[a-z]?)", m[2])) for m in DOC_REF.finditer(_text(bad)))]
    assert refs == [("math.md", ["99"]), ("nothing.md", ["1"])]
    assert OUTSIDE.search(bad.read_text())
