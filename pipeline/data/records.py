"""The record every dataset reader produces, the problem a check reports and the error a
dataset raises (shared by the readers in datasets.py and the list checks in split_lists.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional


class DataError(ValueError):
    """A dataset problem, naming the file."""


@dataclass
class Record:
    id: str
    image: str
    mask: Optional[str]
    height: int = 0
    width: int = 0
    labels: list[int] = field(default_factory=list)  # foreground class ids (1..C-1)


@dataclass
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def per_class_counts(records: Iterable[Record], n_cls: int) -> list[int]:
    """How many of ``records`` carry each class id."""
    counts = [0] * n_cls
    for r in records:
        for c in r.labels:
            counts[c] += 1
    return counts
