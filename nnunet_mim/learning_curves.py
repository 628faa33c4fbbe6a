"""Were the benchmark's runs still learning when their budget ended?

A benchmark at a fixed budget compares the arms where the budget stops them. If they are still
improving then, an arm that only learns sooner looks better than one that ends better: on the CPU
benchmark of MNI152 lobes at 25% labels (docs/benchmarks.md) MiM's +3.1 Dice points over scratch
at 600 fine-tuning steps became -1.3 at 1200. So the benchmark keeps every run's learning curve and reports its last
stretch.

The curve is nnU-Net's EMA pseudo-Dice: the mean foreground Dice on the validation batches it
evaluates after every epoch, as a running average (weight 0.9 on the past), the figure nnU-Net
picks checkpoint_best by. nnU-Net's logger stores it in the run's checkpoint, so it is read from
there rather than parsed from a text log.
"""
import csv
import os
import textwrap
from typing import List, Sequence

import numpy as np

END_SHARE = 0.1  # the last stretch of a run: this share of its epochs (at least one)
CURVES_FIELDS = ["arm", "fraction", "fold", "epoch", "ema_pseudo_dice"]


def read_curve(run_folder: str) -> List[float]:
    """The EMA pseudo-Dice after every epoch of a finished nnU-Net run (its checkpoint_final.pth)."""
    import torch
    # mmap: only the logger's lists are read, not the weights and optimizer state (GBs at the GPU budget)
    checkpoint = torch.load(os.path.join(run_folder, "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False, mmap=True)
    return [float(v) for v in checkpoint["logging"]["ema_fg_dice"]]


def curve_rows(run_folder: str, arm: str, fraction: float, fold: int) -> List[dict]:
    """One row per epoch of a run's curve (the rows of NAME_curves.csv)."""
    return [{"arm": arm, "fraction": fraction, "fold": fold, "epoch": epoch, "ema_pseudo_dice": value}
            for epoch, value in enumerate(read_curve(run_folder))]


def end_span(epochs: int) -> int:
    """The number of epochs in a run's last stretch."""
    return max(1, int(round(END_SHARE * epochs)))


def end_rise(curve: Sequence[float]) -> float:
    """How much the curve rose over its last stretch (nan for a run of one epoch)."""
    if len(curve) < 2:
        return float("nan")
    return float(curve[-1] - curve[-1 - end_span(len(curve))])


def curves_by_run(rows: List[dict]) -> dict:
    """(fraction, arm) -> {fold: curve}, arms in the order the rows give them."""
    runs = {}
    for r in rows:
        runs.setdefault((r["fraction"], r["arm"]), {}).setdefault(r["fold"], []).append((r["epoch"],
                                                                                         r["ema_pseudo_dice"]))
    return {key: {fold: [v for _, v in sorted(points)] for fold, points in folds.items()}
            for key, folds in runs.items()}


def end_of_training_table(rows: List[dict], name: str) -> List[str]:
    """Markdown lines: per label fraction and arm, the EMA pseudo-Dice after the last epoch and its
    rise over the last stretch, mean over folds, with the smallest and largest rise of a fold."""
    lines = ["Were the runs still learning when the budget ended? nnU-Net's EMA pseudo-Dice (validation batches, "
             "mean over folds) after the last epoch and its rise over the last "
             f"{END_SHARE:.0%} of the epochs. A rise well above 0 says the budget stopped the runs while they were "
             "learning: the table above then compares how soon the arms learn more than where they end "
             f"(the curves: {name}_curves.png).", "",
             "| labels | arm | folds | epochs | EMA pseudo-Dice, last epoch | rise over the last n epochs (n) "
             "| rise range |",
             "|---|---|---|---|---|---|---|"]
    for (fraction, arm), folds in curves_by_run(rows).items():
        curves = list(folds.values())
        epochs = sorted({len(c) for c in curves})
        rises = np.array([end_rise(c) for c in curves])
        span = ", ".join(str(end_span(n)) for n in epochs)
        rise = "n/a" if np.isnan(rises).all() else f"{np.nanmean(rises):+.3f} ({span})"
        spread = "n/a" if np.isnan(rises).all() else f"{np.nanmin(rises):+.3f} to {np.nanmax(rises):+.3f}"
        lines.append(f"| {fraction:.0%} | {arm} | {len(curves)} | {', '.join(map(str, epochs))} | "
                     f"{np.mean([c[-1] for c in curves]):.3f} | {rise} | {spread} |")
    return lines


def write_curves(rows: List[dict], folder: str, title: str, name: str) -> None:
    """NAME_curves.csv (one row per run and epoch) and NAME_curves.png (one panel per label
    fraction: the mean curve of each arm over its folds, shaded from the lowest to the highest fold)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}_curves.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVES_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    runs = curves_by_run(rows)
    fractions = sorted({fraction for fraction, _ in runs})
    fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        for (run_fraction, arm), folds in runs.items():
            if run_fraction != fraction:
                continue
            epochs = min(len(c) for c in folds.values())  # folds of one arm and budget share their length
            curves = np.array([c[:epochs] for c in folds.values()])
            x = np.arange(1, epochs + 1)
            line, = ax.plot(x, curves.mean(0), label=f"{arm} ({len(curves)} folds)")
            ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(f"{fraction:.0%} labels", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("EMA pseudo-Dice (validation batches)")
    fig.suptitle(textwrap.fill(title, 120), fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}_curves.png"), dpi=100)
    plt.close(fig)
