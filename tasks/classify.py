"""The shared shape of the token-classification tasks (local_count, two_back): tokens are the
source itself and ``targets[t]`` is the label of position t's token; no BOS, SEP or EOS."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Batch, Task, classification_parts


@dataclasses.dataclass(frozen=True)
class TokenClassification(Task):
    """Source symbols in [0, vocab), pad = vocab, labels in [0, labels)."""

    vocab: int = 16

    @property
    def labels(self) -> int:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self.vocab

    @property
    def vocab_size(self) -> int:
        """Covers the inputs, the pad token and the labels (one output head for all)."""
        return max(self.vocab + 1, self.labels)

    def decode(self, batch: Batch, i: int) -> dict[str, Any]:
        source, labels = classification_parts(batch, i)
        return {"source": source, "labels": labels}
