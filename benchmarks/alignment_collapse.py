"""Does MiM's cross-level alignment collapse? The collapse monitor of each form of the alignment heads, on the CPU.

    python benchmarks/alignment_collapse.py -o OUT [--steps 300]

Trains MiM (preset T, patch 32^3, crops 64^3 of the MNI152 template at 2 mm that nilearn ships; one
head, so the figures say how the heads behave, not how well anything transfers) from the same seed
with each form of the alignment heads, AdamW (0.9, 0.95) at lr 1e-3 and batch 2, and records per
step the collapse monitor ``feature_std`` (the spread over the batch of the unit-length pooled features
the heads take in: 0 when the encoder maps every volume to one vector) and ``target_std`` (the same spread
of the heads' targets, the only monitor until 2026-12-07, which batch-normalised heads hold up), the
alignment terms and the L1 reconstruction loss. Forms:

    shared        one projector for child and parent, the target detached after projecting
                  (this project's form before the fix)
    authors       a child projector and a trainable parent projector on stop-gradient parent features
    authors+BN    the same with batch-normalised hidden layers
    BYOL-noBN     a predictor on the child side, the parent projector a moving average of the child one
    BYOL          the same with batch-normalised hidden layers (the default)

Prints a table of means over each sixth of the run and writes OUT/alignment_collapse.{md,png}.
"""
import argparse
import os

import numpy as np
import torch

from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import MiMPretrainNetwork, ProjectionMLP
from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS, mim_objective
from nnunet_mim.schedule import adamw_param_groups

FORMS = {"shared": (False, False), "authors": (False, False), "authors+BN": (False, True),
         "BYOL-noBN": (True, False), "BYOL": (True, True)}  # (predictor, batch norm)
TERMS = ("rec_l1", "align_l1_l2", "align_l2_l3", "feature_std", "target_std")
CROP = 64


def template_crops(rng: np.random.Generator, volume: torch.Tensor, n: int) -> torch.Tensor:
    starts = [[int(rng.integers(0, d - CROP + 1)) for d in volume.shape] for _ in range(n)]
    return torch.stack([volume[z:z + CROP, y:y + CROP, x:x + CROP] for z, y, x in starts])[:, None]


def train(form: str, volume: torch.Tensor, steps: int) -> np.ndarray:
    torch.manual_seed(0)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    predictor, batch_norm = FORMS[form]
    net = MiMPretrainNetwork(1, 2, alignment_predictor=predictor, alignment_batch_norm=batch_norm,
                             **preset_kwargs("T"))
    heads = net.alignment
    if form == "shared":  # one projector, trained by the child side only
        net.shared = ProjectionMLP(net.reconstruction.embed.out_features, 256, batch_norm=False)
        heads = lambda pair, child, parent: (net.shared(child), net.shared(parent.detach()).detach())  # noqa: E731
    optimizer = torch.optim.AdamW(adamw_param_groups(net, 0.05), lr=1e-3, betas=(0.9, 0.95))
    record = []
    for _ in range(steps):
        levels = build_levels(template_crops(rng, volume, 2), LevelConfig(), generator)
        terms = mim_objective(net, heads, levels, 16, (1.0, 1.0, 1.0), 0.1)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        net.alignment.update_target(0.99)
        record.append([terms[k].item() for k in TERMS])
    return np.array(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS))
    args = parser.parse_args()
    from nilearn.datasets import load_mni152_template
    image = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    brain = image[image > 0]
    volume = torch.from_numpy((image - brain.mean()) / brain.std())
    os.makedirs(args.output, exist_ok=True)
    sixth = args.steps // 6
    lines = [f"MiM, preset T, patch 32^3, batch 2, lr 1e-3, {args.steps} steps, MNI152 crops; means over steps; "
             f"collapse thresholds {COLLAPSE_THRESHOLDS}", "",
             "| form | steps | " + " | ".join(TERMS) + " |", "|---|---|" + "---|" * len(TERMS)]
    curves = {}
    for form in args.forms:
        curves[form] = train(form, volume, args.steps)
        for start in range(0, args.steps - sixth + 1, sixth):
            means = curves[form][start:start + sixth].mean(0)
            lines.append(f"| {form} | {start}-{start + sixth - 1} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
        print("\n".join(lines[-6:]), flush=True)
    lines.append("\nBefore any step (the first step's forward): feature_std "
                 + ", ".join(f"{form} {curves[form][0, TERMS.index('feature_std')]:.4f}" for form in curves))
    with open(os.path.join(args.output, "alignment_collapse.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(curves, os.path.join(args.output, "alignment_collapse.png"))
    print("\n".join(lines))


def plot(curves, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    for form, record in curves.items():
        for ax, name in zip(axes, COLLAPSE_THRESHOLDS):
            ax.plot(np.convolve(record[:, TERMS.index(name)], np.ones(10) / 10, mode="valid"), label=form)
        axes[2].plot(np.convolve(record[:, 1], np.ones(10) / 10, mode="valid"), label=form)
    for ax, (name, threshold) in zip(axes, COLLAPSE_THRESHOLDS.items()):
        ax.axhline(threshold, color="k", ls=":", label="collapse threshold")
        ax.set_ylabel(f"{name} (10-step mean)")
    axes[2].set_ylabel("align_l1_l2 (10-step mean)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle("MiM alignment heads: collapse monitor per form (preset T, CPU, MNI152 crops)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
