"""A job's timeline as a picture: one lane per worker, one bar per task attempt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .protocol import FAILED, SUCCEEDED, ResultRecord

COLORS = {SUCCEEDED: "#4c9a2a", FAILED: "#c0392b"}


def plot_timeline(records: Sequence[ResultRecord], path: str | Path, title: str = "") -> Path:
    """Write a PNG (or any format matplotlib knows by extension) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in records if r.worker_id]
    workers = sorted({r.worker_id for r in ran})
    lane = {w: i for i, w in enumerate(workers)}
    t0 = min((r.started for r in ran), default=0.0)
    height = max(2.5, 0.45 * len(workers) + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    edge = "white" if len(ran) <= 300 else "none"
    for status in (SUCCEEDED, FAILED):
        bars = [(r.started - t0, max(r.duration, 1e-4)) for r in ran if r.status == status]
        lanes = [lane[r.worker_id] for r in ran if r.status == status]
        for (start, width), y in zip(bars, lanes, strict=True):
            ax.broken_barh([(start, width)], (y - 0.4, 0.8), facecolors=COLORS[status],
                           edgecolor=edge, linewidth=0.3)
    failed = [r for r in ran if r.status == FAILED]
    if failed:
        ax.scatter([r.ended - t0 for r in failed], [lane[r.worker_id] for r in failed],
                   marker="x", color="black", zorder=3, label=f"failed ({len(failed)})")
        ax.legend(loc="upper right")
    ax.set_yticks(range(len(workers)))
    ax.set_yticklabels([w.rsplit("/", 1)[-1] for w in workers])
    ax.set_xlabel("seconds since the first task started")
    ax.set_ylabel("worker")
    ax.set_title(title or "fanout job timeline")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
