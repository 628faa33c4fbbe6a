"""A pre-training run's health in two lines, from its checkpoint's logs: did each level's reconstruction loss
fall, and did a collapse monitor end under its threshold. What the demo prints after pre-training, so a
newcomer sees the method working (or not), not only a Dice table."""
from typing import List

import numpy as np

from nnunet_mim.checkpointing import read_checkpoint
from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS


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
