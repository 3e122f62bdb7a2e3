"""The ``DataLoader`` of every data module: drops skipped samples and reports them per pass."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class SkipReportingLoader(DataLoader):
    """A ``DataLoader`` that skips batches that collate to ``None`` and reports skipped corrupt images.

    At the end of every pass (an exhausted epoch, or an iterator that is discarded early) it warns with
    the number of images the dataset skipped during that pass, when there were any.
    """

    def __iter__(self) -> Iterator[Any]:
        counter = getattr(self.dataset, "skip_counter", None)  # a files.SkipCounter, when the dataset has one
        start = counter.total() if counter is not None else 0
        try:
            for batch in super().__iter__():
                if batch is not None:
                    yield batch
        finally:
            skipped = (counter.total() - start) if counter is not None else 0
            if skipped:
                name = getattr(self.dataset, "name", type(self.dataset).__name__)
                warnings.warn(
                    f"{skipped} corrupt image(s) of {name} ({len(self.dataset)} images) were skipped in this pass "
                    "(skip_corrupt=True); the log names each file",
                    RuntimeWarning,
                    stacklevel=2,
                )


__all__ = ["SkipReportingLoader"]
