"""Pictures people look at: overlays, galleries, loss curves, per-class bars.
Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.data.classes import IGNORE, palette  # noqa: E402
from pipeline.fileio import atomic_write  # noqa: E402


def colorize(mask: np.ndarray, pal: np.ndarray | None = None) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) uint8 in ``pal`` (default the VOC colour map; 255 -> white)."""
    pal = palette() if pal is None else np.array(pal, np.uint8)
    pal[IGNORE] = (255, 255, 255)
    return pal[mask.astype(np.uint8)]


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) over an RGB uint8 image with the jet colour map."""
    heat = (plt.get_cmap("jet")(np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


def save_grid(path: Path, rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
              row_labels: Sequence[str] | None = None, cell: float = 2.2,
              pal: np.ndarray | None = None) -> None:
    """A grid of RGB/label images (rows x columns) saved as one PNG; label maps in ``pal``."""
    n_r, n_c = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_r, n_c, figsize=(cell * n_c, cell * n_r), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_c):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row) and row[j] is not None:
                img = row[j]
                ax.imshow(colorize(img, pal) if img.ndim == 2 else img)
            if i == 0 and titles and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
            if j == 0 and row_labels:
                ax.text(0, -4, row_labels[i], fontsize=6)
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:  # never a half-written gallery that a resume or heal would keep
            fig.savefig(tmp, dpi=90, format=Path(path).suffix.lstrip(".") or "png")
    finally:  # a failed write (full disk) leaves no open figure behind in a long-lived process
        plt.close(fig)


def save_loss_history(out_dir: Path, history: list[dict], name: str = "loss") -> None:
    """history: one dict per epoch, e.g. {"epoch": 1, "loss": ..., "lr": ...}; writes JSON + PNG.
    Epochs with a "seed_miou" (the per-epoch seed evaluation, scored against
    GT) add a seed-mIoU panel next to the loss curves."""
    (out_dir / f"{name}_history.json").write_text(json.dumps(history, indent=2))
    skip = ("epoch", "lr", "seconds", "images_per_s")
    keys = [k for k in history[0] if k not in skip and not k.startswith("seed_")] if history else []
    seeds = [h for h in history if h.get("seed_miou") is not None]
    fig, axes = plt.subplots(1, 2 if seeds else 1, figsize=(9.5 if seeds else 5, 3.2), squeeze=False)
    ax = axes[0][0]
    for k in keys:
        ax.plot([h["epoch"] for h in history], [h[k] for h in history], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if seeds:
        ax = axes[0][1]
        ax.plot([h["epoch"] for h in seeds], [h["seed_miou"] for h in seeds], marker="o", color="tab:green")
        top = max(seeds, key=lambda h: h["seed_miou"])
        ax.annotate(f"{top['seed_miou']:.1f} (epoch {top['epoch']})", (top["epoch"], top["seed_miou"]),
                    fontsize=7, textcoords="offset points", xytext=(0, 5), ha="center")
        ax.set_xlabel("epoch")
        ax.set_ylabel("seed mIoU (%), best of bg sweep")
        ax.set_title("seed mIoU against ground truth", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_history.png", dpi=100)
    plt.close(fig)


def save_per_class_bars(path: Path, per_class: dict[str, dict[str, float | None]], title: str) -> None:
    """per_class: {series name: {class: IoU or None}} -> grouped horizontal bar chart."""
    series = list(per_class)
    classes = list(next(iter(per_class.values())))
    y = np.arange(len(classes))
    h = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(classes) + 1.5))
    for i, s in enumerate(series):
        vals = [per_class[s].get(c) or 0.0 for c in classes]
        ax.barh(y + i * h, vals, height=h, label=s)
    ax.set_yticks(y + h * (len(series) - 1) / 2)
    ax.set_yticklabels(classes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
