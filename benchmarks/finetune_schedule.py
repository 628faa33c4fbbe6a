"""Which fine-tuning schedule? The defaults of nnUNetTrainerMiMFinetune against layer-wise lr
decay and a decoder-first start, from the same MiM pre-training, on the same folds and labels.

    python benchmarks/finetune_schedule.py DATASET --budget cpu --fractions 0.25 --folds 0 1 2 \\
        --work-folder WORK     # WORK of an earlier `nnunet-mim benchmark`: its runs are reused

Schedules (all AdamW at the budget's peak lr, weight decay 0.05, 10% linear warm-up, cosine):
    default        every layer at the same rate (nnUNetTrainerMiMFinetune)
    layer-decay    lr x 0.75^(layers above) along the pre-trained encoder (..._LayerDecay)
    decoder-first  pre-trained encoder frozen for the first 10% of the epochs (..._DecoderFirst)

Whether a schedule's gain comes from the pre-training: `nnunet-mim benchmark --schedule S` runs
the scratch arm with the same schedule.

Prints a table (Dice per class and mean over folds, difference to the default, paired t-test) and writes
schedules.md/.csv/.png into WORK/results. "default" is the benchmark's MiM arm: a work folder
shared with `nnunet-mim benchmark` reuses those runs (same trainer, folds and checkpoint).
"""
import argparse
import os
import sys

from nnunet_mim.benchmark import BUDGETS, SCHEDULES, BenchmarkSpec, DownstreamBenchmark, write_outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--budget", choices=["cpu", "cpu-long", "gpu"], default="cpu")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES),
                        help="the default is always run: it is the reference")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work-folder", default="nnunet_mim_benchmark")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    bench = DownstreamBenchmark(BenchmarkSpec(args.dataset, "3d_fullres", args.folds, args.fractions, args.budget,
                                              args.work_folder, args.seed, ["MiM"], args.device))
    checkpoint = bench.pretrain("MiM")
    base = BUDGETS[args.budget].finetune
    rows = []
    for fraction in args.fractions:
        for fold in args.folds:
            for schedule in dict.fromkeys(["default", *args.schedules]):
                trainer = base + SCHEDULES[schedule]
                # the benchmark's MiM arm folder: its runs with the same trainer are reused
                folder = bench.train(bench.folders.fraction_env(fraction, "MiM"), trainer, fold, checkpoint)
                rows += bench.scores(folder, {"arm": schedule, "fraction": fraction, "fold": fold, "trainer": trainer})
    title = (f"Fine-tuning schedules after MiM pre-training: {bench.inputs.dataset_name}, budget '{args.budget}', "
             f"folds {args.folds}" + (f"; {args.note}" if args.note else ""))
    print(write_outputs(rows, os.path.join(bench.folders.work, "results"), title, reference="default",
                        name="schedules"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
