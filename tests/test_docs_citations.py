"""Citations of `docs/conventions.md` stay valid: every "conventions.md §N" in the repository's source,
config and docs names a section that exists, every link to an anchor of the page resolves, and nothing
points at the old notes that lived outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONVENTIONS = ROOT / "docs" / "conventions.md"
SCANNED_DIRS = ("vpog", "kernels", "csrc", "scripts", "benchmarks", "tests", "docs")
SCANNED_TOP = ("README.md", "setup.py", "pyproject.toml", "conftest.py")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".h", ".hpp", ".cpp", ".cu", ".cuh", ".sh", ".sbatch", ".toml", ".txt"}
SKIPPED_DIRS = {"__pycache__", "build", "dist", "outputs", "data_cache"}

# A citation: "conventions.md §4", "docs/conventions.md §4, §6", "conventions §5", "[docs/conventions.md §5](...)".
_CITATION = re.compile(r"conventions(?:\.md)?\]?\s*(§\s*\d+(?:\s*(?:,|and|&|/)?\s*§\s*\d+)*)")
_NUMBER = re.compile(r"§\s*(\d+)")
_ANCHOR = re.compile(r"conventions\.md#([A-Za-z0-9_-]+)")
_HEADING = re.compile(r"^(#{2,6}) (.+?)\s*$", re.MULTILINE)
_SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)
# Names of the notes that used to live next to the repository; spelled in pieces so this file never
# matches a search for them.
_FORBIDDEN = ("SP" + "EC §", "SP" + "EC.md", "REFER" + "ENCES.md", "../" + "shared", "shared/" + "REFER",
              "/work/" + "shared")


def cited_sections(text: str) -> list[int]:
    """Section numbers of every conventions citation in `text`, in order of appearance."""
    out = []
    for m in _CITATION.finditer(text):
        out.extend(int(n) for n in _NUMBER.findall(m.group(1)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_TOP if (ROOT / name).is_file()]
    for d in SCANNED_DIRS:
        for path in sorted((ROOT / d).rglob("*")):
            rel_parts = path.relative_to(ROOT).parts
            if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_DIRS.intersection(rel_parts) \
                    and not any(p.endswith(".egg-info") for p in rel_parts):
                files.append(path)
    return files


def _texts() -> dict[str, str]:
    out = {}
    for path in scanned_files():
        try:
            out[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return out


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return _texts()


@pytest.fixture(scope="module")
def sections() -> set[int]:
    return {int(n) for n in _SECTION.findall(CONVENTIONS.read_text(encoding="utf-8"))}


def test_citation_parser():
    sample = ("see docs/conventions.md §4, §6 and (docs/conventions.md §1); conventions §5-shaped;\n"
              "[docs/conventions.md §7](conventions.md#7-losses); free text §9 is not a citation")
    assert cited_sections(sample) == [4, 6, 1, 5, 7]
    assert github_slug("4. Patch-local flow labels") == "4-patch-local-flow-labels"
    assert github_slug("9. Public op API") == "9-public-op-api"


def test_sections_are_numbered_one_to_nine(sections):
    """The numbering the code cites (frames .. public op API): 1..9, each exactly once."""
    numbers = [int(n) for n in _SECTION.findall(CONVENTIONS.read_text(encoding="utf-8"))]
    assert numbers == list(range(1, 10)), numbers


def test_every_citation_names_an_existing_section(texts, sections):
    bad, total = [], 0
    for name, text in texts.items():
        for lineno, line in enumerate(text.splitlines(), 1):
            for n in cited_sections(line):
                total += 1
                if n not in sections:
                    bad.append(f"{name}:{lineno}: §{n}")
    assert not bad, "citations of sections that docs/conventions.md does not have:\n" + "\n".join(bad)
    # the scan must actually see the code's citations (about a hundred), not silently match nothing
    assert total >= 80, f"only {total} conventions citations found: is the scanner broken?"
    assert 1 in cited_sections(texts["vpog/geometry.py"])
    assert 4 in cited_sections(texts["vpog/ops/patch_flow_labels.py"])


def test_section_references_inside_the_page_exist(sections):
    text = CONVENTIONS.read_text(encoding="utf-8")
    missing = sorted({int(n) for n in _NUMBER.findall(text)} - sections)
    assert not missing, f"docs/conventions.md refers to sections it does not have: {missing}"


def test_anchor_links_resolve(texts):
    slugs = {github_slug(h) for _, h in _HEADING.findall(CONVENTIONS.read_text(encoding="utf-8"))}
    bad = [f"{name}: #{a}" for name, text in texts.items() for a in _ANCHOR.findall(text) if a not in slugs]
    assert not bad, "links to anchors that docs/conventions.md does not have:\n" + "\n".join(bad)


def test_nothing_cites_notes_outside_the_repository(texts):
    bad = [f"{name}:{lineno}: {line.strip()}"
           for name, text in texts.items()
           for lineno, line in enumerate(text.splitlines(), 1)
           if any(f in line for f in _FORBIDDEN)]
    assert not bad, "citations of files outside the repository (cite docs/conventions.md §N):\n" + "\n".join(bad)
