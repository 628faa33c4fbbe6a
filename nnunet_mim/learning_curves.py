"""Were the benchmark's runs still learning when their budget ended?

A benchmark at a fixed budget compares the arms where the budget stops them. If they are still
improving then, an arm that only learns sooner looks better than one that ends better: on the CPU
benchmark of MNI152 lobes at 25% labels (docs/benchmarks.md) MiM's +3.1 Dice points over scratch
at 600 fine-tuning steps became -1.3 at 1200. So the benchmark keeps every run's learning curve
and reports how it ends.

The curve is nnU-Net's pseudo-Dice: the mean foreground Dice on the validation patches it
evaluates after every epoch, kept by its logger in the run's checkpoint (so nothing is parsed from
a text log), raw and as the running average it picks checkpoint_best by (EMA, weight 0.9 on the
past). The EMA trails the raw figure by about ten epochs, so whether a run was still learning at
its end is judged on the raw figure: its mean over the last 10% of the epochs minus its mean over
the 10% before. A clear rise says the run was still learning. No rise proves less: every arm's
learning rate falls to about zero at the end of its schedule (cosine, or nnU-Net's poly), so every
run flattens at its end; only a longer budget says whether it had converged.
"""
import csv
import os
import sys
import textwrap
from typing import List, Sequence

import numpy as np

END_SHARE = 0.1  # a run's end: this share of its epochs (at least one)
CURVES_FIELDS = ["arm", "fraction", "fold", "init_seed", "epoch", "pseudo_dice", "ema_pseudo_dice"]


def curve_rows(run_folder: str, arm: str, fraction: float, fold: int, init_seed: int = 0) -> List[dict]:
    """One row per epoch of a finished nnU-Net run (the rows of NAME_curves.csv): the pseudo-Dice
    and its EMA as nnU-Net logged them in the run's checkpoint_final.pth; none for a run without
    one (its Dice is still scored: a missing curve only leaves that run out of the curves)."""
    from nnunet_mim.checkpointing import read_checkpoint
    checkpoint = os.path.join(run_folder, "checkpoint_final.pth")
    if not os.path.isfile(checkpoint):
        return []
    # mmap: only the logger's lists are read, not the weights and optimizer state (GBs at the GPU budget)
    try:
        logged = read_checkpoint(checkpoint, mmap=True)["logging"]
    except Exception as error:  # a corrupt or foreign file: the run's Dice still counts, its curve is left out
        print(f"warning: no learning curve for {run_folder}: {checkpoint} cannot be read "
              f"({str(error).splitlines()[0][:200]})", file=sys.stderr)
        return []
    return [{"arm": arm, "fraction": fraction, "fold": fold, "init_seed": init_seed, "epoch": epoch,
             "pseudo_dice": float(raw), "ema_pseudo_dice": float(ema)}
            for epoch, (raw, ema) in enumerate(zip(logged["mean_fg_dice"], logged["ema_fg_dice"]))]


def read_curves(results: str, name: str, init_seed: int) -> List[dict]:
    """A finished benchmark's curve rows (NAME_curves.csv in its results folder, or beside the runs
    CSV named), typed as curve_rows made them; none for a benchmark from before curves were kept.
    ``init_seed``: the seed of rows written before rows named theirs (the benchmark's runs say it)."""
    folder = results if os.path.isdir(results) else os.path.dirname(results)
    path = os.path.join(folder, f"{name}_curves.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [dict(r, fraction=float(r["fraction"]), fold=int(r["fold"]), epoch=int(r["epoch"]),
                     init_seed=int(r.get("init_seed") or init_seed), pseudo_dice=float(r["pseudo_dice"]),
                     ema_pseudo_dice=float(r["ema_pseudo_dice"]))
                for r in csv.DictReader(f)]


def end_span(epochs: int) -> int:
    """The number of epochs in a run's end."""
    return max(1, int(round(END_SHARE * epochs)))


def end_change(curve: Sequence[float]) -> float:
    """Mean over a run's end minus mean over as many epochs before it (nan if the run is too short)."""
    span = end_span(len(curve))
    if len(curve) < 2 * span:
        return float("nan")
    return float(np.mean(curve[-span:]) - np.mean(curve[-2 * span:-span]))


def curves_by_run(rows: List[dict], field: str) -> dict:
    """(fraction, arm) -> {(fold, init seed): one field's curve}, arms in the order the rows give them."""
    runs = {}
    for r in rows:
        run = (r["fold"], r.get("init_seed", 0))
        runs.setdefault((r["fraction"], r["arm"]), {}).setdefault(run, []).append((r["epoch"], r[field]))
    return {key: {run: [v for _, v in sorted(points)] for run, points in by_run.items()}
            for key, by_run in runs.items()}


def end_of_training_table(rows: List[dict], name: str) -> List[str]:
    """Markdown lines: per label fraction and arm, the EMA pseudo-Dice after the last epoch and the
    change of the raw pseudo-Dice at the end (mean over runs, and the lowest and highest run; a run is
    one fold at one init seed); none without curves (benchmarks from before curves were kept)."""
    if not rows:
        return []
    lines = ["Were the runs still learning when the budget ended? nnU-Net's pseudo-Dice (validation patches, mean "
             f"over runs): its EMA after the last epoch, and the raw figure's mean over the last {END_SHARE:.0%} of "
             "the epochs minus its mean over as many epochs before. A clear rise says the budget stopped the runs "
             "while they were learning: the table above then compares how soon the arms learn more than where they "
             "end. No rise does not prove convergence (the learning rate ends at zero): compare with a longer budget. "
             f"Curves: {name}_curves.png.", "",
             "| labels | arm | runs | epochs | EMA pseudo-Dice, last epoch | change at the end (epochs) "
             "| lowest, highest run |",
             "|---|---|---|---|---|---|---|"]
    raw = curves_by_run(rows, "pseudo_dice")
    for (fraction, arm), runs in curves_by_run(rows, "ema_pseudo_dice").items():
        curves = list(runs.values())
        epochs = sorted({len(c) for c in curves})
        changes = np.array([end_change(c) for c in raw[fraction, arm].values()])
        if np.isnan(changes).all():
            change = spread = "n/a"
        else:
            change = f"{np.nanmean(changes):+.3f} ({', '.join(str(end_span(n)) for n in epochs)})"
            spread = f"{np.nanmin(changes):+.3f}, {np.nanmax(changes):+.3f}"
        lines.append(f"| {fraction:.0%} | {arm} | {len(curves)} | {', '.join(map(str, epochs))} | "
                     f"{np.mean([c[-1] for c in curves]):.3f} | {change} | {spread} |")
    return lines


def write_curves(rows: List[dict], folder: str, title: str, name: str) -> None:
    """NAME_curves.csv (one row per run and epoch) and NAME_curves.png (one panel per label
    fraction: each arm's EMA pseudo-Dice, mean over its runs, shaded from the lowest to the highest run)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}_curves.csv"), "w", newline="") as f:
        extra = [k for k in (rows[0] if rows else {}) if k not in CURVES_FIELDS]  # nnunet-mim compare: "benchmark"
        writer = csv.DictWriter(f, fieldnames=CURVES_FIELDS + extra)
        writer.writeheader()
        writer.writerows(rows)
    runs = curves_by_run(rows, "ema_pseudo_dice")
    if not runs:  # no run had a checkpoint_final.pth
        return
    fractions = sorted({fraction for fraction, _ in runs})
    fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions):
        for (run_fraction, arm), by_run in runs.items():
            if run_fraction != fraction:
                continue
            epochs = min(len(c) for c in by_run.values())  # runs of one arm and budget share their length
            curves = np.array([c[:epochs] for c in by_run.values()])
            x = np.arange(1, epochs + 1)
            line, = ax.plot(x, curves.mean(0), label=f"{arm} ({len(curves)} runs)")
            ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(f"{fraction:.0%} labels", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("EMA pseudo-Dice (validation patches)")
    fig.suptitle(textwrap.fill(title, 120), fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}_curves.png"), dpi=100)
    plt.close(fig)
