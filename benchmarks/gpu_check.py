"""One command that answers the open GPU questions of this project, for the day a GPU is lent (about
15 minutes in all): prepared, and run on the CPU in the test suite (``--cpu-dry-run``), so that the GPU's
minutes go to measuring, not to finding crashes.

    python benchmarks/gpu_check.py -o OUT                 # one H100/H200: under 8 minutes
    python benchmarks/gpu_check.py -o OUT --cpu-dry-run   # preset T, small patches, seconds per part

Parts, each in its own process with its own time limit; the report (OUT/gpu_check.md, printed too)
says which ran, which failed (the last line of its error) and which were skipped for time:

    pretraining   MiM and MAE samples/s with preset B in bf16 (forward, backward, AdamW; levels batched)
                  at 96^3 and 160^3, peak memory, the share of the step spent building levels and masks
                  (goal under 5%), model FLOP utilisation (FLOPs counted by torch, peak assumed below)
    micro-batch   the largest MiM micro-batch at 96^3 that fits (doubling until out of memory)
    finetuning    the hybrid network's fine-tuning step against nnU-Net's ResEnc-M at the same patch
                  (goal within 1.5x), under nnU-Net's fp16 autocast
    compile       eager against torch.compile (benchmarks/compile.py, inductor)
    commands      a small dataset through the commands a user runs: nnUNetv2_plan_and_preprocess, pre-training
                  with the default recipe (nnUNetTrainerMiMPretrain's settings, shortened), fine-tuning with
                  -pretrained_weights, nnUNetv2_predict; checks the load report and that the loss fell
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
# seconds per part: on one GPU the parts add up to under 8 minutes (the lease is about 15, start-up included)
PART_SECONDS = {"gpu": {"pretraining": 120, "micro-batch": 50, "finetuning": 45, "compile": 75, "commands": 170},
                "dry run": {"pretraining": 120, "micro-batch": 60, "finetuning": 150, "compile": 90, "commands": 300}}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks (vendor sheets)
FLOPS_SCRIPT = """
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective
preset, patch = sys.argv[1], int(sys.argv[2])
net = MiMPretrainNetwork(1, 2, **preset_kwargs(preset))
crop = patch * LevelConfig().crop_factor
levels = build_levels(torch.randn(1, 1, crop, crop, crop), LevelConfig(), torch.Generator().manual_seed(0))
with FlopCounterMode(display=False) as counter:
    mim_objective(net, net.alignment, levels, 16, (1, 1, 1), 0.1)["loss"].backward()
print(json.dumps({"flops_per_sample": counter.get_total_flops()}))
"""
# the default recipe and network (preset B unless the dry run), shortened to minutes: only the length differs
TRAINERS = """
from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune
from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain

class nnUNetTrainerMiMPretrain_GPUcheck(nnUNetTrainerMiMPretrain):
    encoder_preset, epochs, warmup_epochs, checkpoint_every = "{preset}", {epochs}, 1, 1
    iterations_per_epoch, val_iterations_per_epoch = {steps}, 2

class nnUNetTrainerMiMFinetune_GPUcheck(nnUNetTrainerMiMFinetune):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "{preset}", 2, {steps}, 2
"""


class Report:
    def __init__(self, path: str, deadline: float):
        self.path, self.deadline, self.lines = path, deadline, []

    def add(self, *lines: str) -> None:
        self.lines += lines
        print("\n".join(lines), flush=True)
        with open(self.path, "w") as f:
            f.write("\n".join(self.lines) + "\n")

    def part(self, title: str, limit: float, run: Callable[[float], List[str]]) -> None:
        """Run one part within ``limit`` seconds (less when the whole check's time is nearly spent)."""
        left = self.deadline - time.time()
        self.add("", f"## {title}", "")
        if left < 10:
            self.add(f"skipped: the check's time was spent ({left:.0f} s left)")
            return
        start = time.time()
        try:
            self.add(*run(min(limit, left)))
        except subprocess.TimeoutExpired:
            self.add(f"stopped at its time limit ({min(limit, left):.0f} s)")
        except Exception as error:  # a part that fails must not cost the others
            self.add(f"failed: {type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}")
        self.add("", f"({time.time() - start:.0f} s)")


def python(args: List[str], timeout: float) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1])
    return out.stdout


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def pretraining(args, limit: float) -> List[str]:
    deadline = time.time() + limit
    lines = ["| patch | method | samples / s | step / sample (s) | levels + masks share | peak memory (MB) | "
             "FLOPs / sample (T) | model FLOP utilisation |", "|---|---|---|---|---|---|---|---|"]
    peak = PEAK_BF16_FLOPS.get(args.gpu)
    for patch in args.patches:
        flops = last_json(python(["-c", FLOPS_SCRIPT, args.preset, str(patch)], deadline - time.time()))
        for method in ("MAE", "MiM"):
            r = last_json(python([os.path.join(HERE, "pretrain.py"), "--worker", method, "--device", args.device,
                                  "--preset", args.preset, "--patch", str(patch), "--batch", str(args.batch),
                                  "--steps", str(args.steps)], deadline - time.time()))
            per_sample = flops["flops_per_sample"] if method == "MiM" else None
            mfu = (f"{per_sample / r['seconds_per_sample'] / peak:.1%}" if per_sample and peak and
                   args.device == "cuda" else "n/a")
            seconds = r["seconds_per_sample"]
            lines.append(f"| {patch}^3 | {method} | {1 / seconds:.2f} | {seconds:.4f} | "
                         f"{r['level_share']:.1%} | {r['peak_mb']:.0f} | "
                         f"{(per_sample or 0) / 1e12:.3f} | {mfu} |")
    lines.append("")
    lines.append(f"Batch {args.batch}, bf16 autocast on CUDA (fp32 on the CPU), mean of {args.steps} steps after a "
                 f"warm-up. FLOPs: torch's FlopCounterMode over one MiM forward + backward at batch 1 (all 21 "
                 f"volumes); utilisation against {args.gpu}'s dense bf16 peak "
                 f"({'unknown' if not peak else f'{peak / 1e12:.0f} TFLOPS'}).")
    return lines


def micro_batch(args, limit: float) -> List[str]:
    deadline, batch, fits = time.time() + limit, 1, []
    while batch <= args.max_batch and time.time() < deadline:
        try:
            python([os.path.join(HERE, "pretrain.py"), "--worker", "MiM", "--device", args.device, "--preset",
                    args.preset, "--patch", str(args.patches[0]), "--batch", str(batch), "--steps", "1"],
                   deadline - time.time())
        except RuntimeError as error:
            return [f"fits: {fits or 'none'}; batch {batch} failed: {error}"]
        fits.append(batch)
        batch *= 2
    return [f"MiM at {args.patches[0]}^3: micro-batches that fit {fits} (tried up to {args.max_batch}, doubling)"]


def finetuning(args, limit: float) -> List[str]:
    deadline, results = time.time() + limit, {}
    for network in ("MiMHybridUNet-B", "ResEncUNet-M"):
        results[network] = last_json(python([os.path.join(HERE, "network.py"), "--device", args.device,
                                             "--repeats", str(args.steps), "--worker", network,
                                             str(args.finetune_patch)], deadline - time.time()))
    ratio = results["MiMHybridUNet-B"]["seconds"] / results["ResEncUNet-M"]["seconds"]
    return ["| network | step (s) | peak memory (MB) |", "|---|---|---|",
            *[f"| {n} | {r['seconds']:.3f} | {r['peak_mb']:.0f} |" for n, r in results.items()], "",
            f"hybrid / ResEnc-M step time at {args.finetune_patch}^3, batch 1: {ratio:.2f} (goal: 1.5 or less: "
            f"{'met' if ratio <= 1.5 else 'NOT met'})"]


def compile_part(args, limit: float) -> List[str]:
    out = python([os.path.join(HERE, "compile.py"), "--preset", args.preset, "--patch", str(args.compile_patch),
                  "--steps", str(max(args.steps, 3)), "--device", args.device, "--backend", args.backend,
                  "--arms", *args.compile_arms], limit)
    return out.strip().splitlines()


def commands(args, limit: float) -> List[str]:
    deadline = time.time() + limit
    work = tempfile.mkdtemp(prefix="gpu_check_")
    trainers = os.path.join(work, "trainers")
    os.makedirs(trainers)
    with open(os.path.join(trainers, "gpu_check_trainers.py"), "w") as f:
        f.write(TRAINERS.format(preset=args.preset, epochs=args.epochs, steps=args.steps_per_epoch))
    from nnunet_mim.environment import ext_trainer_value
    env = dict(os.environ, nnUNet_raw=os.path.join(work, "raw"), nnUNet_preprocessed=os.path.join(work, "pre"),
               nnUNet_results=os.path.join(work, "results"),
               nnUNet_extTrainer=ext_trainer_value("", cpu_budgets=False) + os.pathsep + trainers)
    bin_folder = os.path.dirname(sys.executable)

    def command(*argv, **kwargs):
        out = subprocess.run([os.path.join(bin_folder, argv[0]), *argv[1:]], capture_output=True, text=True,
                             env={**env, **kwargs}, timeout=max(1.0, deadline - time.time()))
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]}: " + (out.stderr.strip() or out.stdout.strip()).splitlines()[-1])
        return out.stdout

    lines = []
    start = time.time()
    command("nnunet-mim", "example-dataset", "990", "--template", "mni152", "--name", "GPUCheck", "--num-train", "6",
            "--num-test", "1")
    command("nnUNetv2_plan_and_preprocess", "-d", "990", "-c", "3d_fullres", "-np", "2", "-npfp", "2")
    lines.append(f"- dataset made, planned and preprocessed: {time.time() - start:.0f} s")
    device = ["-device", "cpu"] if args.device == "cpu" else []
    # single-process loading on the CPU (its background workers would only compete for the cores)
    training = {"nnUNet_n_proc_DA": "0" if args.device == "cpu" else env.get("nnUNet_n_proc_DA", "8")}
    start = time.time()
    command("nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMPretrain_GPUcheck", *device,
            **training)
    results = os.path.join(work, "results", "Dataset990_GPUCheck")
    pretrained = os.path.join(results, "nnUNetTrainerMiMPretrain_GPUcheck__nnUNetPlans__3d_fullres", "fold_all",
                              "checkpoint_final.pth")
    from nnunet_mim.checkpointing import read_checkpoint
    logged = read_checkpoint(pretrained)["logging"]
    losses, skipped = logged["train_losses"], sum(logged.get("skipped_steps", []))
    lines.append(f"- pre-training, {args.epochs} epochs x {args.steps_per_epoch} steps: {time.time() - start:.0f} s; "
                 f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} "
                 f"({'fell' if losses[-1] < losses[0] else 'DID NOT FALL'}), {skipped} steps discarded")
    start = time.time()
    command("nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMFinetune_GPUcheck", *device,
            "-pretrained_weights", pretrained, **training)
    finetuned = os.path.join(results, "nnUNetTrainerMiMFinetune_GPUcheck__nnUNetPlans__3d_fullres", "fold_all")
    with open(os.path.join(finetuned, "pretrained_weights_report.json")) as f:
        report = json.load(f)
    lines.append(f"- fine-tuning from it, 2 epochs: {time.time() - start:.0f} s; load report: "
                 f"{report['encoder_fraction']:.1%} of the encoder loaded from {report['pretraining']['method']} "
                 "pre-training")
    start = time.time()
    prediction = os.path.join(work, "prediction")
    command("nnUNetv2_predict", "-i", os.path.join(work, "raw", "Dataset990_GPUCheck", "imagesTs"), "-o", prediction,
            "-d", "990", "-c", "3d_fullres", "-tr", "nnUNetTrainerMiMFinetune_GPUcheck", "-f", "all", *device)
    written = sorted(f for f in os.listdir(prediction) if f.endswith(".nii.gz"))
    lines.append(f"- nnUNetv2_predict: {len(written)} segmentation(s) in {time.time() - start:.0f} s")
    lines.append(f"(work folder {work})")
    return lines


PARTS = {"pretraining": ("Pre-training throughput", pretraining), "micro-batch": ("Largest micro-batch", micro_batch),
         "finetuning": ("Fine-tuning step against ResEnc-M", finetuning), "compile": ("torch.compile", compile_part),
         "commands": ("Through the commands", commands)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="folder for gpu_check.md")
    parser.add_argument("--cpu-dry-run", action="store_true", help="preset T, small patches, seconds per part")
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16_FLOPS), help="whose peak FLOPs to assume")
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole check's time limit")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="the parts to run (default: all)")
    args = parser.parse_args()
    dry = args.cpu_dry_run
    args.device = "cpu" if dry else "cuda"
    args.preset = "T" if dry else "B"
    args.patches = [64] if dry else [96, 160]
    args.batch, args.steps, args.max_batch = (1, 1, 1) if dry else (4, 5, 64)
    args.finetune_patch = 64 if dry else 128
    # the dry run traces the fine-tuning network only (aot_eager: no code generation), in seconds
    args.compile_patch, args.backend, args.compile_arms = ((32, "aot_eager", ["finetune"]) if dry else
                                                           (96, "inductor", ["finetune", "pretrain"]))
    args.epochs, args.steps_per_epoch = (2, 2) if dry else (6, 50)
    os.makedirs(args.output, exist_ok=True)
    report = Report(os.path.join(args.output, "gpu_check.md"), time.time() + args.minutes * 60)
    import torch
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    report.add(f"# GPU check ({'CPU dry run' if dry else device_name}, {time.strftime('%Y-%m-%d %H:%M')})", "",
               f"torch {torch.__version__}, preset {args.preset}; `python benchmarks/gpu_check.py"
               f"{' --cpu-dry-run' if dry else ''}`")
    limits = PART_SECONDS["dry run" if dry else "gpu"]
    for name in args.parts:
        title, run = PARTS[name]
        report.part(title, limits[name], lambda limit: run(args, limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
