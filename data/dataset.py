"""A lazily loaded, indexable collection of samples, shared by every reader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import DatasetError
from .sample import Sample


@dataclass
class Entry:
    """One sample before loading: its name, where its image lives, and how to load it."""

    name: str
    source: str
    load_image: Callable[[], np.ndarray]
    load_labels: Callable[[], np.ndarray]
    mask_source: str = ""


@dataclass
class Dataset:
    """Sequence of samples, loaded on access (``ds[i]``, ``ds.get(name)``), checked on load.

    ``root`` is the folder or file the reader was given; ``format`` the reader's name.
    """

    entries: list[Entry]
    root: str = ""
    format: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for position, entry in enumerate(self.entries):
            if entry.name in seen:
                other = self.entries[seen[entry.name]]
                raise DatasetError(f"two samples share the name '{entry.name}' ({other.source} and {entry.source}); names (file stems) must be unique", self.root)
            seen[entry.name] = position
        self._index = seen

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def __getitem__(self, position: int) -> Sample:
        return load_entry(self.entries[position])

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            yield load_entry(entry)

    def get(self, name: str) -> Sample:
        if name not in self._index:
            raise DatasetError(f"no sample named '{name}'", self.root)
        return self[self._index[name]]

    def subset(self, names: Sequence[str]) -> "Dataset":
        """The samples named, in that order; a name that is missing is an error."""
        missing = [name for name in names if name not in self._index]
        if missing:
            raise DatasetError(f"{len(missing)} name(s) not in the dataset: {', '.join(missing[:10])}", self.root)
        return Dataset([self.entries[self._index[name]] for name in names], self.root, self.format)

    def validate(self) -> None:
        """Load every sample once, so that bad files fail before any work starts."""
        for entry in self.entries:
            load_entry(entry)


def load_entry(entry: Entry) -> Sample:
    image = entry.load_image()
    labels = entry.load_labels()
    if image.shape[:2] != labels.shape:
        where = entry.mask_source or entry.source
        raise DatasetError(
            f"image is {image.shape[1]}x{image.shape[0]} (WxH) but its mask is {labels.shape[1]}x{labels.shape[0]}",
            where,
        )
    return Sample(image=image, labels=labels.astype(np.int32, copy=False), name=entry.name, source=entry.source)


def in_memory(samples: Sequence[Sample], root: str = "", format: str = "memory") -> Dataset:
    """A Dataset over samples already in memory (synthetic data, tests)."""
    entries = [
        Entry(s.name, s.source, (lambda s=s: s.image), (lambda s=s: s.labels))
        for s in samples
    ]
    return Dataset(entries, root, format)
