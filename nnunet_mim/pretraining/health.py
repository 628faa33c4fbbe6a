"""A pre-training run's health: its curves drawn (``progress.png``), a collapse said in the log while it lasts
(``collapse_warnings``), and two lines from a finished run's checkpoint (did each level's reconstruction loss
fall, did a collapse monitor end under its threshold): what the demo prints after pre-training, so a newcomer
sees the method working (or not), not only a Dice table."""
from typing import Callable, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_mim.checkpointing import read_checkpoint  # noqa: E402
from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS  # noqa: E402

COLLAPSE_EPOCHS = 3  # consecutive epochs of a collapse monitor under its threshold that make the log warn
COLLAPSED = {"feature_std": "the encoder maps every volume to nearly one vector",
             "target_std": "the alignment heads map every volume to nearly one vector"}


def collapse_warnings(train_curves: Dict[str, Sequence[float]], warmup_epochs: int) -> List[str]:
    """A warning per collapse monitor (``train_curves``: its values per epoch, by monitor name) that has stayed
    under its threshold for the last COLLAPSE_EPOCHS epochs after the warm-up: a form that collapses does so in
    its first steps and may recover from there (docs/method.md: BYOL's form without batch norm, measured)."""
    warnings = []
    for name, values in train_curves.items():
        threshold, recent = COLLAPSE_THRESHOLDS[name], list(values)[warmup_epochs:][-COLLAPSE_EPOCHS:]
        if len(recent) == COLLAPSE_EPOCHS and all(v < threshold for v in recent):
            warnings.append(f"WARNING: the alignment has collapsed: {name} has been below {threshold} for "
                            f"{COLLAPSE_EPOCHS} epochs ({recent[-1]:.2g} now): {COLLAPSED[name]}, and the alignment "
                            "terms teach the encoder nothing. See docs/method.md.")
    return warnings


def plot_progress(curve: Callable[[str], List[float]], loss_terms: Sequence[str], title: str, method: str,
                  filename: str) -> None:
    """progress.png: train and validation losses, the learning rate and, with alignment, the collapse monitors
    against their thresholds. ``curve(key)``: nnU-Net's logged values of ``key`` per epoch."""
    epochs = range(len(curve("val_losses")))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    for split, ax in zip(["train", "val"], axes):
        ax.plot(epochs, curve(f"{split}_losses")[:len(epochs)], "k-", lw=2, label="total")
        for name in (n for n in loss_terms if n not in COLLAPSE_THRESHOLDS):
            ax.plot(epochs, curve(f"{split}_{name}")[:len(epochs)], label=name)
        ax.set_title(f"{method} pre-training: {split} losses")
        ax.set_xlabel("epoch")
        ax.legend()
    axes[2].plot(epochs, curve("lrs")[:len(epochs)], "b-", label="learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate", color="b")
    monitors = [name for name in COLLAPSE_THRESHOLDS if name in loss_terms]
    if monitors:
        spread = axes[2].twinx()
        for name, color in zip(monitors, ("r", "m")):
            spread.plot(epochs, curve(f"train_{name}")[:len(epochs)], f"{color}-", label=f"{name} (train)")
            spread.axhline(COLLAPSE_THRESHOLDS[name], color=color, ls=":", label=f"{name} collapse threshold")
        spread.set_ylabel("spread over the batch")
        spread.set_ylim(bottom=0)
        spread.legend(loc="upper right")
    axes[2].set_title("learning rate and alignment spread")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(filename, dpi=80)
    plt.close(fig)


def health_lines(checkpoint_path: str) -> List[str]:
    logged = read_checkpoint(checkpoint_path)["logging"]
    levels = sorted(key for key in logged if key.startswith("train_rec_l"))
    falls = []
    for key in levels:
        first, last = float(logged[key][0]), float(logged[key][-1])
        falls.append(f"{key.removeprefix('train_rec_').upper()} {first:.3f} -> {last:.3f} "
                     f"({(last - first) / first:+.0%})")
    lines = [f"reconstruction loss over {len(logged[levels[0]])} epochs (training, per level): " + ", ".join(falls)]
    monitors = [name for name in COLLAPSE_THRESHOLDS if f"train_{name}" in logged]
    if monitors:
        states = []
        for name in monitors:
            value, threshold = float(logged[f"train_{name}"][-1]), COLLAPSE_THRESHOLDS[name]
            state = "above" if np.isfinite(value) and value >= threshold else "BELOW (collapsed)"
            states.append(f"{name} {value:.3f}, {state} its threshold {threshold}")
        lines.append("collapse monitors at the last epoch: " + "; ".join(states))
    else:
        lines.append("collapse monitors: none (no alignment in this method)")
    return lines
