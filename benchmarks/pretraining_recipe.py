"""Does the pre-training recipe learn? Reconstruction loss per crop seen, through the real trainer.

    python benchmarks/pretraining_recipe.py --work-folder W                 # MAE, preset T, CPU
    python benchmarks/pretraining_recipe.py --work-folder W --arm EB8=8:1e-3 --arm lr2e-3=1:2e-3

Builds the demo's example dataset (MNI152 deformations: one head, not independent subjects), plans
and preprocesses it with nnU-Net, then runs the pre-training trainer once per arm, in a process of
its own, on the same micro-steps (crops of the plan's batch; --iterations per epoch must be a
multiple of every arm's accumulation steps, so that every arm sees the same crops): only the
effective batch and the lr differ. Arms:

    default      the trainer's own recipe (effective_batch, base_lr), only its length scaled down
    paper        the MiM paper's recipe: effective batch 512, lr 1e-4 x 512 / 256 = 2e-4
    NAME=E:LR    any other effective batch E and lr LR (--arm, repeatable), e.g. hand-set=1:1e-3 for
                 what the CPU variants ran before the recipe existed (no accumulation, lr 1e-3)

With ``--equal-steps N`` every arm makes N optimizer steps per epoch instead (N x its accumulation micro-steps):
the arms then see different numbers of crops, the comparison per update rather than per crop.

Every arm warms up as the trainer does (a tenth of the epochs, at least one: half of a 2-epoch run)
and ends its cosine at its last optimizer step. Prints the training reconstruction loss of every
epoch (mean of its micro-steps; every arm sees the same crops per epoch) and the validation loss at
the end (fixed crops and masks, the same for every arm); writes the curves to
W/pretraining_recipe.png, the table to W/pretraining_recipe.md and the curves' figures to
W/pretraining_recipe.json.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

PAPER = (512, 2e-4)
DATASET_ID = 994


def dataset_env(work: str) -> Dict[str, str]:
    from nnunet_mim.environment import ext_trainer_value
    return dict(os.environ, nnUNet_raw=os.path.join(work, "raw"), nnUNet_preprocessed=os.path.join(work, "pre"),
                nnUNet_results=os.path.join(work, "results"), nnUNet_extTrainer=ext_trainer_value("", cpu_budgets=True))


def prepare(work: str) -> Dict[str, str]:
    from nnunet_mim.data.example import write_example_dataset
    from nnunet_mim.demo import nnunet_command
    env = dataset_env(work)
    if not os.path.isdir(env["nnUNet_preprocessed"]):
        for key in ("nnUNet_raw", "nnUNet_results"):
            os.makedirs(env[key], exist_ok=True)
        write_example_dataset(env["nnUNet_raw"], DATASET_ID, name="RecipeBench")
        subprocess.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                        "-np", "2"], env=env, check=True, capture_output=True)
    return dict(env, nnUNet_n_proc_DA="0")


def worker(method: str, arm: str, effective_batch: int, lr: float, epochs: int, iterations: int,
           equal_steps: int) -> dict:
    """One arm: the real trainer, its recipe replaced by (effective batch, lr), run in this process."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed

    from nnunet_mim.pretraining.recipe import PretrainingRecipe
    from nnunet_mim.pretraining.trainer import nnUNetTrainerMAEPretrain, nnUNetTrainerMiMPretrain
    base = nnUNetTrainerMiMPretrain if method == "MiM" else nnUNetTrainerMAEPretrain
    folder = os.path.join(nnUNet_preprocessed, f"Dataset{DATASET_ID}_RecipeBench")
    plans = dict(load_json(os.path.join(folder, "nnUNetPlans.json")), continue_training=False)
    plan_batch = plans["configurations"]["3d_fullres"]["batch_size"]
    settings = dict(encoder_preset="T", epochs=epochs, warmup_epochs=max(1, epochs // 10),
                    val_iterations_per_epoch=4, checkpoint_every=epochs + 1)
    if arm != "default":
        settings.update(effective_batch=effective_batch, base_lr=lr * 256 / max(effective_batch, plan_batch))
    name = f"{base.__name__}_recipe_{arm.replace('-', '_')}"
    trainer_class = type(name, (base,), settings)
    # the same micro-steps for every arm: whole optimizer steps of this arm's accumulation
    recipe = PretrainingRecipe(plan_batch, trainer_class.effective_batch, trainer_class.base_lr)
    if equal_steps:
        iterations = equal_steps * recipe.accumulation_steps
    elif iterations % recipe.accumulation_steps:
        raise SystemExit(f"--iterations {iterations} is not a multiple of arm {arm}'s {recipe.accumulation_steps} "
                         "accumulation steps: the arms would see different crops")
    trainer_class.iterations_per_epoch = iterations
    trainer = trainer_class(plans, "3d_fullres", "all", load_json(os.path.join(folder, "dataset.json")),
                            torch.device("cpu"))
    trainer.run_training()
    get = trainer.logger.get_value
    return {"arm": arm, "recipe": trainer.recipe.describe(), "crops_per_epoch": trainer.num_iterations_per_epoch
            * trainer.recipe.plan_batch, "optimizer_steps": trainer.optimizer_steps_per_epoch * epochs,
            "train": [float(v) for v in get("train_rec_l1", None)], "val": [float(v) for v in get("val_rec_l1", None)]}


def parse_arms(given: List[str]) -> Dict[str, tuple]:
    arms = {"default": (0, 0.0), "paper": PAPER}  # (effective batch, lr); the default arm keeps the trainer's
    for text in given:
        name, _, value = text.partition("=")
        batch, _, lr = value.partition(":")
        arms[name] = (int(batch), float(lr))
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-folder", required=True)
    parser.add_argument("--method", choices=["MAE", "MiM"], default="MAE")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=256, help="micro-steps per epoch, a multiple of every "
                        "arm's accumulation steps (the paper's: 256 at a plan batch of 2)")
    parser.add_argument("--equal-steps", type=int, default=0, metavar="N", help="N optimizer steps per epoch for "
                        "every arm (instead of the same micro-steps)")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=E:LR")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="arms to leave out, e.g. paper")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = os.path.abspath(args.work_folder)
    if args.worker:
        arm, batch, lr = args.worker
        print(json.dumps(worker(args.method, arm, int(batch), float(lr), args.epochs, args.iterations,
                                args.equal_steps)))
        return
    env = prepare(work)
    results = []
    arms = {name: value for name, value in parse_arms(args.arm).items() if name not in args.skip}
    for arm, (batch, lr) in arms.items():
        out = subprocess.run([sys.executable, __file__, "--work-folder", work, "--method", args.method, "--epochs",
                              str(args.epochs), "--iterations", str(args.iterations), "--equal-steps",
                              str(args.equal_steps), "--worker", arm, str(batch), str(lr)], env=env,
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"arm {arm} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{arm}: {results[-1]['recipe']}", flush=True)
    per_epoch = (f"{args.equal_steps} optimizer steps" if args.equal_steps else
                 f"{args.iterations} micro-steps ({results[0]['crops_per_epoch']} crops)")
    lines = [f"{args.method}, preset T, {args.epochs} epochs of {per_epoch}, CPU; L1 reconstruction loss "
             "(normalised targets)", "",
             "| arm | recipe | optimizer steps | crops | train loss, epoch 1 .. last | val loss at end |",
             "|---|---|---|---|---|---|"]
    for r in results:
        curve = " ".join(f"{v:.3f}" for v in r["train"])
        lines.append(f"| {r['arm']} | {r['recipe']} | {r['optimizer_steps']} | {r['crops_per_epoch'] * args.epochs} | "
                     f"{curve} | {r['val'][-1]:.3f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(work, "pretraining_recipe.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(work, "pretraining_recipe.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(work, "pretraining_recipe.png"), args.method)


def plot(results: List[dict], path: str, method: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in results:
        seen = [r["crops_per_epoch"] * (i + 1) for i in range(len(r["train"]))]
        axes[0].plot(seen, r["train"], label=r["arm"])
        axes[1].plot(seen, r["val"], label=r["arm"])
    for ax, split in zip(axes, ("train", "validation")):
        ax.set_xlabel("crops seen")
        ax.set_ylabel(f"{split} L1 reconstruction loss")
        ax.legend()
    fig.suptitle(f"{method} pre-training recipes, preset T, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
