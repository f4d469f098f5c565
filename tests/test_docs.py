"""The project stands alone: every markdown document that a file of the project names exists
in the project (beside the file, under the repository root, or by its name somewhere in it),
except the files the suite itself writes."""

import re
import subprocess
from pathlib import Path

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
