"""Can the frozen-encoder probe tell a useful encoder from a random one? Its positive control.

`nnunet-mim benchmark --schedule frozen-encoder` trains only the stem, decoder and heads on top of
each arm's encoder. Pre-trained encoders that score level with a random one there say nothing
unless the probe rewards an encoder that does know the task. The control arm, "supervised": the
encoder of the same network trained with labels (the scratch trainer at the default schedule on
all training cases of the fold, i.e. the benchmark's scratch arm at 100% labels, whose runs are
reused), put in place of the MAE pre-training checkpoint's encoder (``transplant_encoder``, as
`nnunet-mim adapt-checkpoint --encoder-from` does), then probed like every other arm: same trainer,
labelled cases, folds and seeds, and the decoder starts as the MAE arm's. Its encoder never saw the
fold's validation cases.

    python benchmarks/probe_control.py DATASET --budget cpu-xlong --fraction 0.1 --folds 0 1 2 3 4 \\
        --work-folder WORK   # WORK of `nnunet-mim benchmark --schedule frozen-encoder`: its runs are reused

Prints a table (Dice per class and mean over folds, difference to the random encoder, paired
t-test) and writes probe_control.md/.csv/.png into WORK/results. `--arms MAE` probes MAE alone beside
scratch and the control, without MiM's pre-training.
"""
import argparse
import os
import sys

from nnunet_mim.benchmark import BUDGETS, BenchmarkSpec, DownstreamBenchmark, write_outputs
from nnunet_mim.checkpointing import save_checkpoint_file
from nnunet_mim.finetuning.checkpoint import load_checkpoint, transplant_encoder

PRETRAINED_ARMS = ["MAE", "MiM"]
CONTROL = "supervised"
HOST = "MAE"  # the control's encoder goes into this arm's pre-training checkpoint: it is always probed


def supervised_checkpoint(bench: DownstreamBenchmark, fold: int, host: str) -> str:
    """``host`` (the MAE pre-training checkpoint) with the encoder of the fold's scratch run on all labels."""
    path = os.path.join(bench.folders.work, "probe_control", f"supervised_encoder_fold_{fold}.pth")
    if not os.path.isfile(path):
        labelled = bench.train(bench.folders.fraction_env(1.0, "scratch"), bench.budget.scratch, fold)
        checkpoint = load_checkpoint(host)
        transplant_encoder(checkpoint, load_checkpoint(os.path.join(labelled, "checkpoint_final.pth")))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_checkpoint_file(checkpoint, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    # the control's folder is named for the budget's own pre-training: not for budgets that borrow another's
    parser.add_argument("--budget", choices=[b for b, budget in BUDGETS.items() if not budget.pretrain_label],
                        default="cpu-xlong")
    parser.add_argument("--fraction", type=float, default=0.1, help="labelled share of each fold's training cases")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", choices=PRETRAINED_ARMS, default=PRETRAINED_ARMS,
                        help="pre-trained arms to probe beside scratch and the control; MAE is always among them "
                             "(--arms MAE leaves out MiM's pre-training, the longest step on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work-folder", default="nnunet_mim_benchmark")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if HOST not in args.arms:
        parser.error(f"--arms must include {HOST}: the control's encoder is put into {HOST}'s pre-training checkpoint")
    probed = ["scratch"] + [arm for arm in PRETRAINED_ARMS if arm in args.arms]  # scratch: the random encoder

    bench = DownstreamBenchmark(BenchmarkSpec(args.dataset, "3d_fullres", args.folds, [args.fraction], args.budget,
                                              args.work_folder, args.seed, probed, args.device,
                                              schedule="frozen-encoder"))
    checkpoints = {method: bench.pretrain(method) for method in bench.pretrained_methods}
    rows = []
    for fold in args.folds:
        for arm in probed + [CONTROL]:
            pretrained = supervised_checkpoint(bench, fold, checkpoints[HOST]) if arm == CONTROL \
                else checkpoints.get(arm)
            trainer = bench.trainer(HOST if arm == CONTROL else arm)
            folder = bench.train(bench.folders.fraction_env(args.fraction, arm), trainer, fold, pretrained)
            rows += bench.scores(folder, {"arm": arm, "fraction": args.fraction, "fold": fold, "trainer": trainer})
    title = (f"Frozen-encoder probe with a supervised encoder as positive control: {bench.inputs.dataset_name}, budget "
             f"'{args.budget}', {args.fraction:.0%} labels, folds {args.folds}, seed {args.seed}"
             + (f"; {args.note}" if args.note else ""))
    print(write_outputs(rows, os.path.join(bench.folders.work, "results"), title, name="probe_control"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
