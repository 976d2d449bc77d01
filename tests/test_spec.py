"""docs/algorithms.md is the one spec: no file of the repository cites the spec it replaced
(the steering notes' algorithms file, which a clone does not have), every section a file
cites exists there, under the numbering others cite, and its parameter tables state the
defaults the code has.

Files that cite docs/algorithms.md are checked for every section sign followed by a number
(also ranges such as 2.1-2.2, and bare ones such as "(see 7)" written with the sign), since in
this repository they all point into the spec.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = "docs/algorithms.md"
OLD_SPEC = "ALGORITHMS" + ".md"  # spelled in two parts so that this file does not cite it
SECTION = "\u00a7"
# A section sign, a number (2, 2.1), and optionally the end of a range (2.1-2.2, 3-4).
CITED = re.compile(SECTION + r"\s?(\d+(?:\.\d+)*)(?:\s?[-\u2013]\s?(\d+(?:\.\d+)*))?")
# The numbering agreed on while the spec was written; code and docs cite it.
AGREED = {"1", "2", "2.1", "2.2", "2.3", "3", "4", "4.1", "4.2", "5", "6", "6.1", "6.2", "6.3", "7", "8"}
def spec_sections(text: str) -> set[str]:
    """The section numbers of the spec's headings (lines starting with '#')."""
    return {m.group(1) for line in text.splitlines() if line.startswith("#") for m in CITED.finditer(line)}


def problems(name: str, text: str, sections: set[str]) -> list[str]:
    """What is wrong with one file's citations: the old spec named, or sections the spec lacks."""
    found = []
    if OLD_SPEC in text:
        found.append(f"{name}: cites {OLD_SPEC} (repoint it to {SPEC} {SECTION}N)")
    if SPEC in text or name == SPEC:
        for m in CITED.finditer(text):
            for number in filter(None, m.groups()):
                if number not in sections:
                    line = text.count("\n", 0, m.start()) + 1
                    found.append(f"{name}:{line}: cites {SECTION}{number}, which {SPEC} has no heading for")
    return found


def repository_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files (git), or every file outside build and tool
    folders when this is not a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".hypothesis", ".pytest_cache", "__pycache__", "build", "dist"}
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not any(part in skip or part.endswith(".egg-info") for part in p.parts)]
    return sorted(name for name in listed if (ROOT / name).is_file())


def text_of(name: str) -> str | None:
    """The file as text, or None for a binary file (a NUL byte in it)."""
    data = (ROOT / name).read_bytes()
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


def spec_defaults(text: str) -> dict[str, str]:
    """Request parameter -> the default its spec table row states (rows "| `name` ... | range |
    default | source |")."""
    defaults = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.match(r"`([a-z0-9_]+)`", cells[0]) if line.startswith("|") and len(cells) == 4 else None
        if name:
            defaults[name.group(1)] = cells[2].strip('`"')
    return defaults


@pytest.fixture(scope="module")
def sections() -> set[str]:
    return spec_sections((ROOT / SPEC).read_text(encoding="utf-8"))


def test_the_spec_has_the_agreed_numbering(sections):
    assert sections == AGREED, f"{SPEC}'s headings hold {sorted(sections)}, the agreed numbering is {sorted(AGREED)}"


def test_the_spec_states_every_request_default():
    from real_vllm.methods import KNOWN_PARAMS, METHOD_CONFIGS

    stated = spec_defaults((ROOT / SPEC).read_text(encoding="utf-8"))
    assert set(KNOWN_PARAMS) - {"sampler"} <= set(stated), f"{SPEC} has no table row for some parameters"
    for config in METHOD_CONFIGS.values():
        for key, field in config.PARAMS.items():
            default = getattr(config(), field)
            if isinstance(default, str) or hasattr(default, "name"):  # a choice (dola_divergence)
                assert stated[key] == str(default), f"{key}: {SPEC} says {stated[key]!r}, the code {default}"
            else:
                assert float(stated[key]) == default, f"{key}: {SPEC} says {stated[key]}, the code {default}"


def test_the_check_catches_bad_citations():
    sections = {"1", "2", "2.1"}
    assert problems("a.py", f"see {SPEC} {SECTION}2.1 and {SECTION}1", sections) == []
    assert problems("b.py", "no spec cited here: section 9 " + SECTION + "9", sections) == []
    assert len(problems("c.py", f"{SPEC} {SECTION}2.1-2.4, then {SECTION}3", sections)) == 2
    assert problems("d.py", f"as {OLD_SPEC} says", sections) == [f"d.py: cites {OLD_SPEC} (repoint it to {SPEC} {SECTION}N)"]
    assert spec_sections(f"# {SECTION}1 EDT\ntext {SECTION}5\n### {SECTION}2.1 THF") == {"1", "2.1"}
    assert spec_defaults("| `edt_t0` | > 0 | 1.0 | [project] |\n| `a` | b |") == {"edt_t0": "1.0"}


def test_citations(sections):
    files = list(repository_files())
    assert files, "no files to check"
    found = [p for name in files if (text := text_of(name)) is not None for p in problems(name, text, sections)]
    assert not found, "\n".join(found)
