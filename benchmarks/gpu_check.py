"""One command that answers the open GPU questions of this project, for the day a GPU is lent (about 15
minutes in all, the machine's start included): prepared, and run on the CPU (``--cpu-dry-run``, the slow test
tier, also from the offline bundle), so that the GPU's minutes go to measuring, not to finding crashes.

    python benchmarks/gpu_check.py -o OUT                 # one H100/H200: about 9 minutes
    python benchmarks/gpu_check.py -o OUT --cpu-dry-run   # preset T, small patches, on the CPU even beside a GPU

On an offline GPU machine that lacks nnU-Net's stack, install benchmarks/gpu_bundle.py's archive first
(docs/usage.md, "The GPU check"). Parts, each in its own process group with its own time limit; every row
goes into OUT/gpu_check.md as it is measured, so a part that fails, runs out of memory or out of time keeps
the rows before it (the report says which ran, failed, stopped or were skipped):

    device        the card, its bf16 peak from its name, and a measured 8192^3 bf16 matrix product
    pretraining   MiM and MAE with the default trainer's network (preset B) in bf16 at 96^3, 128^3 and an
                  anisotropic patch, each at the micro-batch the trainer chooses for this card out of a plan
                  batch of 2: samples/s, the levels' share of the step, CUDA's peak memory against the
                  prediction (pretraining/memory.py; goal within 15%), model FLOPs counted on the card
                  (nnunet_mim/flops.py) and their utilisation of the peak and of the measured matrix product
    finetuning    the hybrid network's fine-tuning step against nnU-Net's ResEnc-M at the same patch
                  (goal within 1.5x), under nnU-Net's fp16 autocast
    compile       pre-training eager against torch.compile (inductor): first step, step after, graphs,
                  graph breaks, recompiles (benchmarks/compile.py)
    commands      a small dataset through the commands a user runs: nnUNetv2_plan_and_preprocess, pre-training
                  with the default recipe (nnUNetTrainerMiMPretrain's settings, shortened), fine-tuning with
                  -pretrained_weights, nnUNetv2_predict; checks the load report and that the loss fell
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
# seconds per part: on one GPU about 9 minutes together (the lease is about 15, start-up and install included)
PART_SECONDS = {"gpu": {"device": 30, "pretraining": 170, "finetuning": 45, "compile": 150, "commands": 150},
                "dry run": {"device": 30, "pretraining": 240, "finetuning": 150, "compile": 120, "commands": 300}}
# dense bf16 tensor-core peaks from the vendors' sheets, by what torch.cuda.get_device_name() contains
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)]
MATMUL_SCRIPT = """
import json, sys, time, torch
n, device = int(sys.argv[1]), sys.argv[2]
dtype = torch.bfloat16 if device == "cuda" else torch.float32
a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
for _ in range(3):
    a @ b
if device == "cuda":
    torch.cuda.synchronize()
start, repeats = time.perf_counter(), 10
for _ in range(repeats):
    a @ b
if device == "cuda":
    torch.cuda.synchronize()
print(json.dumps({"flops_per_s": 2 * n ** 3 * repeats / (time.perf_counter() - start)}))
"""
# the default recipe and network (preset B unless the dry run), shortened to minutes: only the length, the
# checkpoints (few: I/O is not what is measured) and the snapshots differ
TRAINERS = """
from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune
from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain

class nnUNetTrainerMiMPretrain_GPUcheck(nnUNetTrainerMiMPretrain):
    encoder_preset, epochs, warmup_epochs, checkpoint_every = "{preset}", {epochs}, 1, {epochs}
    iterations_per_epoch, val_iterations_per_epoch, snapshot_fractions = {steps}, 2, ()

class nnUNetTrainerMiMFinetune_GPUcheck(nnUNetTrainerMiMFinetune):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "{preset}", 2, {steps}, 2
"""


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Report:
    def __init__(self, path: str, deadline: float):
        self.path, self.deadline = path, deadline
        open(path, "w").close()

    def add(self, *lines: str) -> None:
        """Print and append at once: what is measured is on disk before the next measurement starts."""
        print("\n".join(lines), flush=True)
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")

    def part(self, title: str, limit: float, run: Callable[[float, Callable[[str], None]], None]) -> None:
        """Run one part within ``limit`` seconds (less when the whole check's time is nearly spent)."""
        left = self.deadline - time.time()
        self.add("", f"## {title}", "")
        if left < 10:
            self.add(f"skipped: the check's time was spent ({left:.0f} s left)")
            return
        start = time.time()
        try:
            run(min(limit, left), self.add)
        except subprocess.TimeoutExpired:
            self.add(f"stopped at its time limit ({min(limit, left):.0f} s); the rows above were measured")
        except Exception as error:  # a part that fails must not cost the others
            self.add(f"failed: {type(error).__name__}: {last_line(str(error)) or 'no message'}")
        self.add("", f"({time.time() - start:.0f} s)")


def run_in_group(argv: List[str], timeout: float, env: dict = None) -> str:
    """A child in a process group of its own: at the time limit the whole group is killed (inductor's compile
    workers, nnU-Net's data-loading workers), not only the child. Its stdout; a RuntimeError with the last line
    it printed where it failed."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=env)
    try:
        out, err = process.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(last_line(err) or last_line(out) or f"exit code {process.returncode}, no output")
    return out


def python(args: List[str], timeout: float) -> str:
    return run_in_group([sys.executable, *args], timeout)


def last_json(text: str) -> dict:
    return json.loads(last_line(text))


def device_peak(args) -> float:
    if args.device != "cuda":
        return 0.0
    import torch
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), 0.0)


def device(args, limit: float, emit) -> None:
    import torch
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (dry run)"
    memory = (f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.1f} GiB"
              if args.device == "cuda" else "n/a")
    args.peak = device_peak(args)
    size = 8192 if args.device == "cuda" else 512
    args.matmul = last_json(python(["-c", MATMUL_SCRIPT, str(size), args.device], limit))["flops_per_s"]
    import nnunet_mim
    emit(f"- {name}, {memory}; torch {torch.__version__}; nnunet_mim from {os.path.dirname(nnunet_mim.__file__)}",
         f"- dense bf16 peak from the vendor's sheet: {args.peak / 1e12:.0f} TFLOP/s" if args.peak else
         "- dense bf16 peak: not known for this device",
         f"- measured {size}^3 {'bf16' if args.device == 'cuda' else 'fp32'} matrix product: "
         f"{args.matmul / 1e12:.1f} TFLOP/s")


def pretraining(args, limit: float, emit) -> None:
    deadline = time.time() + limit
    emit("| patch | method | micro-batch (checkpointed) | samples / s | levels + masks share | peak memory (MiB) | "
         "predicted (MiB) | predicted / peak | FLOPs / sample (T) | utilisation of peak | of measured matmul |",
         "|---|---|---|---|---|---|---|---|---|---|---|")
    for patch in args.patches:
        for method in ("MAE", "MiM"):
            r = last_json(python([os.path.join(HERE, "pretrain.py"), "--worker", method, "--device", args.device,
                                  "--preset", args.preset, "--worker-patch", *map(str, patch), "--batch",
                                  str(args.plan_batch), "--steps", str(args.steps), "--auto-batch", "--flops"],
                                 deadline - time.time()))
            seconds, flops = r["seconds_per_sample"], r["flops_per_sample"]
            peak = getattr(args, "peak", 0.0)
            mfu = f"{flops / seconds / peak:.1%}" if peak else "n/a"
            of_matmul = f"{flops / seconds / args.matmul:.1%}" if getattr(args, "matmul", 0) else "n/a"
            emit(f"| {'x'.join(map(str, patch))} | {method} | {r['batch']}{' (yes)' if r['checkpointing'] else ''} | "
                 f"{1 / seconds:.2f} | {r['level_share']:.1%} | {r['peak_mb']:.0f} | {r['predicted_mb']:.0f} | "
                 f"{r['predicted_mb'] / max(r['peak_mb'], 1e-9):.2f} | {flops / 1e12:.3f} | {mfu} | {of_matmul} |")
    emit("", f"Plan batch {args.plan_batch}, the micro-batch the trainers choose for this device's memory; bf16 "
         f"autocast on CUDA (fp32 on the CPU, whose 'peak' is the growth of the process's RSS); mean of "
         f"{args.steps} steps after a warm-up. FLOPs: one step counted on the device (nnunet_mim/flops.py).")


def finetuning(args, limit: float, emit) -> None:
    deadline, results = time.time() + limit, {}
    emit("| network | step (s) | peak memory (MB) |", "|---|---|---|")
    for network in ("MiMHybridUNet-B", "ResEncUNet-M"):
        results[network] = last_json(python([os.path.join(HERE, "network.py"), "--device", args.device,
                                             "--repeats", str(args.steps), "--worker", network,
                                             str(args.finetune_patch)], deadline - time.time()))
        emit(f"| {network} | {results[network]['seconds']:.3f} | {results[network]['peak_mb']:.0f} |")
    ratio = results["MiMHybridUNet-B"]["seconds"] / results["ResEncUNet-M"]["seconds"]
    emit("", f"hybrid / ResEnc-M step time at {args.finetune_patch}^3, batch 1: {ratio:.2f} (goal: 1.5 or less: "
         f"{'met' if ratio <= 1.5 else 'NOT met'})")


def compile_part(args, limit: float, emit) -> None:
    out = python([os.path.join(HERE, "compile.py"), "--preset", args.preset, "--patch", str(args.compile_patch),
                  "--steps", str(max(args.steps, 3)), "--device", args.device, "--backend", args.backend,
                  "--arms", *args.compile_arms], limit)
    emit(*out.strip().splitlines())


def commands(args, limit: float, emit) -> None:
    from nnunet_mim.demo import nnunet_command
    from nnunet_mim.environment import ext_trainer_value
    deadline = time.time() + limit
    work = tempfile.mkdtemp(prefix="gpu_check_")
    trainers = os.path.join(work, "trainers")
    os.makedirs(trainers)
    with open(os.path.join(trainers, "gpu_check_trainers.py"), "w") as f:
        f.write(TRAINERS.format(preset=args.preset, epochs=args.epochs, steps=args.steps_per_epoch))
    # nnUNet_compile=f: nnU-Net would compile the fine-tuning network for minutes, and compile has a part
    env = dict(os.environ, nnUNet_raw=os.path.join(work, "raw"), nnUNet_preprocessed=os.path.join(work, "pre"),
               nnUNet_results=os.path.join(work, "results"), nnUNet_compile="f",
               nnUNet_extTrainer=ext_trainer_value("", cpu_budgets=False) + os.pathsep + trainers)
    # single-process loading on the CPU (its background workers would only compete for the cores)
    training = {"nnUNet_n_proc_DA": "0" if args.device == "cpu" else env.get("nnUNet_n_proc_DA", "8")}

    def command(*argv, **variables):
        try:
            return run_in_group([nnunet_command(argv[0]), *argv[1:]], deadline - time.time(), {**env, **variables})
        except RuntimeError as error:
            raise RuntimeError(f"{argv[0]}: {error}") from None

    start = time.time()
    command("nnunet-mim", "example-dataset", "990", "--template", "ct-phantom", "--name", "GPUCheck",
            "--num-train", "6", "--num-test", "1")
    command("nnUNetv2_plan_and_preprocess", "-d", "990", "-c", "3d_fullres", "-np", "2", "-npfp", "2")
    emit(f"- dataset made (ct-phantom), planned and preprocessed: {time.time() - start:.0f} s")
    device_args = ["-device", "cpu"] if args.device == "cpu" else []
    start = time.time()
    command("nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMPretrain_GPUcheck", *device_args,
            **training)
    results = os.path.join(work, "results", "Dataset990_GPUCheck")
    pretrained = os.path.join(results, "nnUNetTrainerMiMPretrain_GPUcheck__nnUNetPlans__3d_fullres", "fold_all",
                              "checkpoint_final.pth")
    from nnunet_mim.checkpointing import read_checkpoint
    logged = read_checkpoint(pretrained)["logging"]
    losses, skipped = logged["train_losses"], sum(logged.get("skipped_steps", []))
    emit(f"- pre-training, {args.epochs} epochs x {args.steps_per_epoch} steps: {time.time() - start:.0f} s; "
         f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} "
         f"({'fell' if losses[-1] < losses[0] else 'DID NOT FALL'}), {skipped} steps discarded")
    start = time.time()
    command("nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMFinetune_GPUcheck", *device_args,
            "-pretrained_weights", pretrained, **training)
    finetuned = os.path.join(results, "nnUNetTrainerMiMFinetune_GPUcheck__nnUNetPlans__3d_fullres", "fold_all")
    with open(os.path.join(finetuned, "pretrained_weights_report.json")) as f:
        report = json.load(f)
    emit(f"- fine-tuning from it, 2 epochs: {time.time() - start:.0f} s; load report: "
         f"{report['encoder_fraction']:.1%} of the encoder loaded from {report['pretraining']['method']} pre-training")
    start = time.time()
    prediction = os.path.join(work, "prediction")
    command("nnUNetv2_predict", "-i", os.path.join(work, "raw", "Dataset990_GPUCheck", "imagesTs"), "-o", prediction,
            "-d", "990", "-c", "3d_fullres", "-tr", "nnUNetTrainerMiMFinetune_GPUcheck", "-f", "all", *device_args)
    written = sorted(f for f in os.listdir(prediction) if f.endswith(".nii.gz"))
    emit(f"- nnUNetv2_predict: {len(written)} segmentation(s) in {time.time() - start:.0f} s", f"(work folder {work})")


PARTS = {"device": ("Device", device), "pretraining": ("Pre-training throughput and memory", pretraining),
         "finetuning": ("Fine-tuning step against ResEnc-M", finetuning), "compile": ("torch.compile", compile_part),
         "commands": ("Through the commands", commands)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="folder for gpu_check.md")
    parser.add_argument("--cpu-dry-run", action="store_true", help="preset T, small patches, on the CPU")
    parser.add_argument("--minutes", type=float, default=10.0, help="the whole check's time limit")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run (default: "
                        "all; the pre-training part uses the device part's figures)")
    args = parser.parse_args()
    dry = args.cpu_dry_run
    if dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even on a machine with a GPU, in every child too
    import torch
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not dry and args.device != "cuda":
        parser.error("no CUDA device: run with --cpu-dry-run on a machine without a GPU")
    args.preset = "T" if dry else "B"
    args.patches = [(64, 64, 64), (32, 64, 64)] if dry else [(96, 96, 96), (128, 128, 128), (64, 192, 160)]
    args.plan_batch, args.steps = (1, 1) if dry else (2, 4)
    args.finetune_patch = 64 if dry else 128
    # the dry run traces only (aot_eager: no code generation), in seconds
    args.compile_patch, args.backend, args.compile_arms = ((32, "aot_eager", ["pretrain"]) if dry else
                                                           (64, "inductor", ["pretrain"]))
    args.epochs, args.steps_per_epoch = (2, 2) if dry else (6, 50)
    os.makedirs(args.output, exist_ok=True)
    report = Report(os.path.join(args.output, "gpu_check.md"), time.time() + args.minutes * 60)
    report.add(f"# GPU check ({'CPU dry run' if dry else torch.cuda.get_device_name(0)}, "
               f"{time.strftime('%Y-%m-%d %H:%M')})", "",
               f"torch {torch.__version__}, preset {args.preset}; `python benchmarks/gpu_check.py"
               f"{' --cpu-dry-run' if dry else ''} --parts {' '.join(args.parts)}`")
    limits = PART_SECONDS["dry run" if dry else "gpu"]
    for name in args.parts:
        title, run = PARTS[name]
        report.part(title, limits[name], lambda limit, emit: run(args, limit, emit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
