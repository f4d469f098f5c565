"""The project stands alone: every markdown document that a file of the project names exists
in the project (beside the file, under the repository root, or by its name somewhere in it),
except the files the suite itself writes."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRITTEN = {"leaderboard.md"}  # results/leaderboard.md, written by `suite leaderboard`
CITED = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_]\.md\b")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_every_cited_document_exists():
    files = tracked()
    names = {p.name for p in files}
    missing = []
    for path in files:
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for cite in set(CITED.findall(text)):
            name = cite.rsplit("/", 1)[-1]
            if name in WRITTEN:
                continue
            here = [path.parent / cite.lstrip("/"), ROOT / cite.lstrip("/")]
            if not any(p.is_file() for p in here) and name not in names:
                missing.append(f"{path.relative_to(ROOT)}: {cite}")
    assert not missing, missing
    assert len(files) > 50  # the walk saw the project


def test_the_docs_folder_holds_what_the_code_cites():
    for doc in ("design", "protocol", "paper", "calibration", "peers"):
        text = (ROOT / "docs" / f"{doc}.md").read_text()
        assert text.startswith("# ") and len(text) > 2000, doc


PAGES = ["README.md", "results/published/LEDGER.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: a path of the project named in backticks, e.g. `suite/cpu.py` or `results/published/x.json`
CODE_PATH = re.compile(r"`((?:attentions|tasks|suite|results|tests|docs|\.ci)/[A-Za-z0-9_./-]*)`")
#: paths the suite writes (not in the repository until a command runs)
WRITTEN_PATHS = ("results/mlflow.db", "results/mlartifacts/", "results/checkpoints/",
                 "results/leaderboard.")


@pytest.mark.parametrize("page", PAGES)
def test_links_of_the_readme_and_docs_resolve(page):
    """Every relative link and image of the README and the docs pages opens a file of the
    project (web links and in-page anchors aside)."""
    path = ROOT / page
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page}: links that open nothing: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_code_paths_the_readme_and_docs_name_exist(page):
    """Every project path a page names in backticks (`suite/cpu.py`,
    `results/published/...json`) exists, but the files the suite writes when it runs."""
    missing = [ref for ref in CODE_PATH.findall((ROOT / page).read_text())
               if not ref.startswith(WRITTEN_PATHS) and not (ROOT / ref).exists()]
    assert not missing, f"{page}: names paths that do not exist: {missing}"


def test_the_readme_is_short():
    """What a newcomer reads first stays a five-minute read: measurements live in
    docs/results.md and docs/performance.md."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
