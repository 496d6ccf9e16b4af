"""The small charts the drop and avalanche benchmarks draw: distributions as CDF lines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def chart(path: Path, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """An axes to draw on; saved to `path` (with grid, legend and title) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def cdf(ax: Any, values: Iterable[float], label: str) -> None:
    """The share of `values` at or below each value, as a line (nothing when empty)."""
    ordered = sorted(values)
    if ordered:
        ax.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label)
