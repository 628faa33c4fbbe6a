"""The ``nnunet-mim`` command."""
import argparse
import sys
import warnings
from typing import Iterable, Tuple


def cmd_env(args) -> int:
    from nnunet_mim.environment import env_lines
    print("\n".join(env_lines(args.cpu_budgets)))
    return 0


def cmd_trainers(args) -> int:
    from nnunet_mim.variants import trainer_list
    print(trainer_list())
    return 0


def cmd_check(args) -> int:
    from nnunet_mim.environment import check, trainers_path
    problems = check()
    if not problems:
        print(f"ok: nnU-Net finds the nnunet-mim trainers in {trainers_path()}")
        return 0
    print("\n".join(f"problem: {p}" for p in problems), file=sys.stderr)
    return 1


def cmd_demo(args) -> int:
    from nnunet_mim.demo import Demo, format_results
    try:
        results = Demo(args.work_folder, args.pretrain_trainer, args.finetune_trainer, args.scratch_trainer)()
    except (FileExistsError, RuntimeError) as error:  # a used work folder; a failed step (its log is named)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\nDice on the held-out cases (cases built from one template; a smoke-sized CPU run):")
    print(format_results(results))
    return 0


def cmd_adapt_checkpoint(args) -> int:
    import os

    from nnunet_mim.checkpointing import save_checkpoint_file
    from nnunet_mim.finetuning.checkpoint import (adapt_input_channels, load_checkpoint,
                                                  pretraining_checkpoint_record, transplant_encoder)
    from nnunet_mim.pretrained_loading import unusable_weights
    if args.input_channels is None and args.encoder_from is None:
        print("nothing to do: give --input-channels N and/or --encoder-from CHECKPOINT", file=sys.stderr)
        return 1
    if os.path.exists(args.output):
        print(f"{args.output} exists; choose another --output (nothing is overwritten)", file=sys.stderr)
        return 1
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        print(f"the folder of --output {args.output} does not exist; create it first (nothing was written)",
              file=sys.stderr)
        return 1
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        nnssl = isinstance(checkpoint.get("nnssl_adaptation_plan"), dict)  # another tool's: no record of ours
        if nnssl and args.encoder_from is not None:
            raise RuntimeError(f"{args.checkpoint} is an nnssl checkpoint: --encoder-from replaces the encoder of this "
                               "project's hybrid network only")
        if not nnssl:
            pretraining_checkpoint_record(args.checkpoint, checkpoint)
        if args.encoder_from is not None:
            replaced = transplant_encoder(checkpoint, load_checkpoint(args.encoder_from))
            print(f"{len(replaced)} encoder tensors from {args.encoder_from} (recorded as supervised pre-training)")
        if args.input_channels is not None:
            for line in adapt_input_channels(checkpoint, args.input_channels):
                print(line)
        problem = unusable_weights(checkpoint["network_weights"])
        if problem:
            raise RuntimeError(f"{args.checkpoint} holds weights no training can start from: {problem}; nothing "
                               "was written")
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    save_checkpoint_file(checkpoint, args.output)
    print(f"wrote {args.output}; pass it to nnUNetv2_train ... -pretrained_weights {args.output}")
    return 0


def cmd_export(args) -> int:
    import os

    from nnunet_mim.finetuning.checkpoint import load_checkpoint, pretraining_checkpoint_record
    from nnunet_mim.nnssl_format import FILES, export_nnssl
    taken = [name for name in FILES if os.path.exists(os.path.join(args.output, name))]
    if taken:
        print(f"error: {args.output} already holds {', '.join(taken)}; choose another -o (nothing is overwritten)",
              file=sys.stderr)
        return 1
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        pretraining_checkpoint_record(args.checkpoint, checkpoint)
        paths = export_nnssl(checkpoint, args.output)
    except (RuntimeError, ValueError, OSError) as error:  # OSError: -o a file, a folder not writable, disk full
        print(f"error: {args.checkpoint} was not exported: {error}", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


def cmd_pretrain_plan(args) -> int:
    from nnunet_mim.pretraining.fit import pretrain_plan
    if (args.dataset is None) == (args.patch is None) or (args.patch is None) != (args.batch is None):
        print("give a planned dataset, or --patch Z Y X and --batch N instead of one", file=sys.stderr)
        return 2
    try:
        return pretrain_plan(args.dataset, args.plans, args.configuration, args.patch, args.batch, args.gpu_memory,
                             args.trainers)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def cmd_benchmark(args) -> int:
    import os

    from nnunet_mim.benchmark import BenchmarkError
    from nnunet_mim.run_lock import RUN_LOCK, FolderInUse, exclusive_run
    pairs = args.pretrained_weights or []
    given = dict(pairs)
    if len(given) < len(pairs):
        print("error: --pretrained-weights names an arm twice", file=sys.stderr)
        return 2
    work = os.path.abspath(args.work_folder)
    try:
        with exclusive_run(os.path.join(work, RUN_LOCK), work):
            return run_benchmark(args, given)
    except (BenchmarkError, FolderInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run_benchmark(args, given: dict) -> int:
    from nnunet_mim.benchmark import (RESULTS_NAME, SCRATCH_DEFAULT, BenchmarkSpec, DownstreamBenchmark,
                                      mean_dice_against, paragraphs, write_outputs)
    from nnunet_mim.learning_curves import end_of_training_table, write_curves
    spec = BenchmarkSpec(dataset=args.dataset, configuration=args.configuration, folds=args.folds,
                         fractions=args.fractions, budget=args.budget, work_folder=args.work_folder, seed=args.seed,
                         arms=args.arms, device=args.device, pretrain_dataset=args.pretrain_dataset,
                         schedule=args.schedule, plans=args.plans, pretrain_plans=args.pretrain_plans,
                         report_only=args.report_only, init_seeds=args.init_seed, pretrained_weights=given,
                         note=args.note, results_folder=args.results_folder)
    bench = DownstreamBenchmark(spec)
    rows, curves = bench.run()
    results, title = spec.results_folder or bench.folders.work + "/results", bench.title()
    write_curves(curves, results, title, RESULTS_NAME)
    notes = paragraphs(mean_dice_against(rows, SCRATCH_DEFAULT) if SCRATCH_DEFAULT in spec.arms else [],
                       bench.table_notes(), end_of_training_table(curves, RESULTS_NAME))
    print(write_outputs(rows, results, title, notes=notes))
    return 0


def cmd_compare(args) -> int:
    from nnunet_mim.benchmark import (RESULTS_NAME, arms_in, differing_arms, merge_benchmarks, paragraphs,
                                      read_runs, titled_init_seed, write_outputs)
    from nnunet_mim.learning_curves import end_of_training_table, read_curves, write_curves
    benchmarks, curves, titles = {}, {}, []
    for label, results in args.benchmarks:
        if label in benchmarks:
            print(f"the label {label!r} is given twice", file=sys.stderr)
            return 2
        try:
            benchmarks[label], title = read_runs(results)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        curves[label] = read_curves(results, RESULTS_NAME, titled_init_seed(title))
        titles.append(f"- {label}: {title or results}" + ("" if curves[label] else " (no learning curves kept)"))
    differing = differing_arms(benchmarks)
    rows = merge_benchmarks(benchmarks, differing, ("fraction", "fold", "init_seed", "class"))
    if args.reference not in arms_in(rows):
        print(f"error: no arm {args.reference!r} to compare with; the arms are {arms_in(rows)} (choose one with "
              "--reference)", file=sys.stderr)
        return 1
    title = f"{len(benchmarks)} benchmarks combined ({', '.join(benchmarks)})" + (f"; {args.note}" if args.note else "")
    combined_curves = merge_benchmarks(curves, differing, ("fraction", "fold", "init_seed", "epoch"))
    if combined_curves:
        write_curves(combined_curves, args.output_folder, title, "comparison")
    notes = paragraphs(titles, end_of_training_table(combined_curves, "comparison"))
    print(write_outputs(rows, args.output_folder, title, reference=args.reference, name="comparison", notes=notes))
    return 0


def cmd_example_dataset(args) -> int:
    import os

    from nnunet_mim.data.example import write_example_dataset
    from nnunet_mim.data.templates import TEMPLATES
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        print("error: nnUNet_raw is not set: the dataset is written into nnU-Net's raw folder", file=sys.stderr)
        return 1
    name = args.name or "".join(part.capitalize() for part in args.template.split("-"))  # colin27-lobes: Colin27Lobes
    try:
        written = write_example_dataset(raw, args.dataset_id, args.num_train, args.num_test, args.spacing, args.seed,
                                        name, template=args.template)
    except (OSError, ValueError) as error:  # existing dataset, template not installed
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written['folder']}\n  {TEMPLATES[args.template].source_note}\n"
          f"next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 3d_fullres")
    return 0


def cmd_pretrain_dataset_create(args) -> int:
    from nnunet_mim.data.collection import CollectionSettings, create, format_summary
    from nnunet_mim.pretraining.data import load_collection_manifest
    weights = dict(args.source_weight)
    settings = CollectionSettings(modality=args.modality, spacing=args.spacing, patch_size=args.patch_size,
                                  like_dataset=args.like, ct_window=tuple(args.ct_window), batch_size=args.batch_size,
                                  sampling=args.sampling, source_weights=weights,
                                  test_images=not args.no_test_images)
    try:
        summary = create(args.dataset_id, args.name, args.inputs, settings, args.np)
    except (OSError, ValueError, RuntimeError) as error:  # bad input: say what, without a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary, load_collection_manifest(summary["folder"])["cases"]))
    print(f"pre-train on it: nnUNetv2_train {args.dataset_id} 3d_fullres all -tr nnUNetTrainerMiMPretrain")
    return 0 if summary["done"] else 1


def env_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Print `export nnUNet_extTrainer=...` (existing entries kept). Use: eval \"$(nnunet-mim env)\""
    p.add_argument("--cpu-budgets", action="store_true",
                   help="add the folder of the CPU budget trainers (the demo's, the tests', the CPU benchmarks')")
    p.set_defaults(func=cmd_env)


def trainers_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "List the trainers to run with nnUNetv2_train -tr, one line each."
    p.set_defaults(func=cmd_trainers)


def check_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Exit status 1 and one line per problem when nnUNetv2_train would not find or could not load "
                     "the nnunet-mim trainers.")
    p.set_defaults(func=cmd_check)


def adapt_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Write a new file for nnUNetv2_train -pretrained_weights from a pre-training checkpoint of any "
                     "backbone, or an nnssl checkpoint (the file given is only read): --input-channels N rewrites its "
                     "input projections for N channels (each new "
                     "kernel = mean of the source kernels x source/N channels); --encoder-from replaces its encoder "
                     "by the encoder of a segmentation model trained with labels (its checkpoint_final.pth), "
                     "recorded as supervised pre-training, e.g. as a positive control for the frozen-encoder probe.")
    p.add_argument("checkpoint")
    p.add_argument("--input-channels", type=positive_int, metavar="N")
    p.add_argument("--encoder-from", metavar="CHECKPOINT",
                   help="checkpoint of an nnUNetTrainerMiMScratch/-Finetune run of the same preset")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_adapt_checkpoint)


def positive_int(text: str, what: str = "a number of channels") -> int:
    """The argparse type of a count that must be at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not {what} (give 1 or more)")
    return value


def batch_size(text: str) -> int:
    return positive_int(text, "a batch size")


def positive_mm(text: str) -> float:
    """The argparse type of a spacing in mm: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of mm") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} mm is not a spacing (give a positive number of mm)")
    return value


def name_and_value(text: str) -> Tuple[str, str]:
    """The argparse type of NAME=VALUE arguments (argparse names the option in its error)."""
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def name_and_weight(text: str) -> Tuple[str, float]:
    name, value = name_and_value(text)
    try:
        weight = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None
    if not 0 <= weight < float("inf"):
        raise argparse.ArgumentTypeError(f"{name}'s weight {value} is not a share (give 0 or more)")
    return name, weight


class DistinctValues(argparse.Action):
    """``nargs="+"`` that refuses a value given twice, as argparse refuses a bad choice: a benchmark
    run listed twice would count twice in the paired test."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = list(dict.fromkeys(v for v in values if values.count(v) > 1))
        if repeated:
            raise argparse.ArgumentError(self, f"{' '.join(map(str, repeated))} given more than once (its runs would "
                                               "count twice in the paired test); give each value once")
        setattr(namespace, self.dest, values)


def benchmark_arguments(p: argparse.ArgumentParser) -> None:
    from nnunet_mim import benchmark
    p.description, p.formatter_class = benchmark.__doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("dataset", help="nnU-Net dataset ID or name (planned and preprocessed)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier, as nnUNetv2_train -p (e.g. "
                   "nnUNetResEncUNetMPlans): the stock arm trains its network, the hybrid arms its patch and spacing")
    p.add_argument("--pretrain-plans", default=None, help="plans of --pretrain-dataset (default: -p for self "
                   "pre-training, nnUNetPlans for another dataset, the only plans a collection has)")
    p.add_argument("--folds", type=int, nargs="+", action=DistinctValues, default=[0, 1, 2, 3, 4])
    p.add_argument("--fractions", type=float, nargs="+", action=DistinctValues, default=[0.1, 0.25, 1.0])
    p.add_argument("--budget", choices=list(benchmark.BUDGETS), default="cpu")
    p.add_argument("--arms", nargs="+", choices=benchmark.ARM_CHOICES, action=DistinctValues, default=benchmark.ARMS,
                   help=f"default: {' '.join(benchmark.ARMS)}; with --schedule, {benchmark.SCRATCH_DEFAULT} adds "
                   "scratch at the default schedule")
    p.add_argument("--schedule", choices=list(benchmark.SCHEDULES), default="default",
                   help="fine-tuning schedule of scratch and the pre-trained arms (the stock arm keeps nnU-Net's, "
                   f"{benchmark.SCRATCH_DEFAULT} the default); frozen-encoder never trains the encoder: a probe of "
                   "what the pre-trained features are worth against a random encoder's")
    p.add_argument("--pretrain-dataset", default=None, help="pre-train on this planned dataset (ID or name) "
                   "instead of the benchmark dataset's own training images")
    p.add_argument("--pretrained-weights", nargs="+", type=name_and_value, metavar="ARM=FILE",
                   help="fine-tune a pre-trained arm from this checkpoint instead of pre-training it (e.g. "
                   "MAE=.../checkpoint_final.pth from a run of your own); given=FILE for weights of another network "
                   "(an nnssl checkpoint, a Primus or ResEnc pre-training), run by the arms given and given-scratch "
                   "on that network; the table names the file")
    p.add_argument("--seed", type=int, default=0, help="seed of the label-fraction subsets")
    p.add_argument("--init-seed", type=int, nargs="+", action=DistinctValues, default=[0], metavar="SEED",
                   help="seed(s) of the fine-tuning runs (NNUNET_MIM_SEED): the random initialisation (scratch's "
                   "network, the new decoder of the pre-trained arms), crops and augmentation; each seed has its own "
                   "results folders, pre-training keeps seed 0. With several, every arm runs at each seed and the "
                   "tables average each fold over the seeds before the paired test (one seed moved a five-fold mean "
                   "by about 1 point here: docs/benchmarks.md)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--work-folder", default="nnunet_mim_benchmark")
    p.add_argument("--results-folder", default=None, help="default: WORK_FOLDER/results")
    p.add_argument("--note", default="", help="printed with the table, e.g. where the data comes from")
    p.add_argument("--report-only", action="store_true", help="train nothing: write the tables and charts from the "
                   "runs finished in WORK_FOLDER (fails, naming it, if one is missing)")
    p.set_defaults(func=cmd_benchmark)


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Combine the results folders of several `nnunet-mim benchmark` runs into one table, CSV and "
                     "chart, with every arm compared to --reference by a paired t-test over the folds both have. A "
                     "run two benchmarks share (same arm, labels, fold, init seed and Dice, such as scratch reused "
                     "in one work folder) is counted once; an arm that differs between them (MiM pre-trained two "
                     "ways, or run on another label draw, --seed) becomes 'ARM LABEL' in each; an arm's runs "
                     "at other --init-seeds are one arm, each fold averaged over its seeds. Writes "
                     "OUTPUT/comparison.md, .csv, _runs.csv and .png, and joins the benchmarks' learning curves the "
                     "same way (comparison_curves.csv and .png).")
    p.add_argument("benchmarks", nargs="+", type=name_and_value, metavar="LABEL=RESULTS",
                   help="a short label and a benchmark's results folder (or its downstream_runs.csv)")
    p.add_argument("--reference", default="scratch", help="the arm every other is compared with (default: "
                   "scratch), e.g. 'MiM 32' to compare with one benchmark's MiM")
    p.add_argument("-o", "--output-folder", required=True)
    p.add_argument("--note", default="", help="added to the title of the table and chart, e.g. the dataset")
    p.set_defaults(func=cmd_compare)


def example_dataset_arguments(p: argparse.ArgumentParser) -> None:
    from nnunet_mim.data import example, templates
    p.description = example.__doc__ + "\n" + templates.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("dataset_id", type=int, help="ID of the new dataset in $nnUNet_raw")
    p.add_argument("--template", choices=sorted(templates.TEMPLATES), default="mni152")
    p.add_argument("--name", default=None, help="default: derived from the template")
    p.add_argument("--num-train", type=int, default=10)
    p.add_argument("--num-test", type=int, default=0, help="held-out cases (imagesTs + labelsTs)")
    p.add_argument("--spacing", type=positive_mm, default=4.0, help="isotropic spacing in mm")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_example_dataset)


def pretrain_dataset_arguments(p: argparse.ArgumentParser) -> None:
    from nnunet_mim.data import collection
    actions = p.add_subparsers(dest="action", required=True)
    p = actions.add_parser("create", help="collect, plan and preprocess (resumable: rerun to continue)",
                           description=collection.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="ID of the new nnU-Net dataset")
    p.add_argument("-n", "--name", required=True, help="its name: Dataset<ID>_<NAME>")
    p.add_argument("-i", "--inputs", nargs="+", required=True, help="nnU-Net raw dataset IDs or names (imagesTr "
                   "and imagesTs are used, labels never) and folders searched for images and DICOM series")
    p.add_argument("-m", "--modality", choices=["ct", "mr"], default="ct", help="ct: fixed intensity window; "
                   "mr: per-volume z-score. nnU-Net datasets contribute the channels of this modality")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--spacing", type=positive_mm, nargs=3, metavar=("Z", "Y", "X"), help="target spacing in mm, "
                       "array axis order as in nnU-Net plans (default: nnU-Net's rule on the images found)")
    group.add_argument("--like", metavar="DATASET", help="take spacing and patch size from this planned dataset's "
                       "3d_fullres plan (the fine-tuning target)")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="multiples of 16; MiM "
                   "pre-trains at it rounded down to multiples of 32 (default: about 96^3 voxels of equal "
                   "physical extent per axis, at most the median image)")
    p.add_argument("--ct-window", type=float, nargs=2, default=list(collection.DEFAULT_CT_WINDOW),
                   metavar=("LOW", "HIGH"), help="HU clipped to [LOW, HIGH], then mapped to [-1, 1]")
    p.add_argument("--sampling", choices=["uniform", "per_source"], default="uniform", help="how pre-training "
                   "draws cases: uniformly, or each source its weight's share (equal by default)")
    p.add_argument("--source-weight", action="append", default=[], type=name_and_weight, metavar="NAME=WEIGHT",
                   help="weight of one source for --sampling per_source (repeatable)")
    p.add_argument("--no-test-images", action="store_true", help="leave out imagesTs of nnU-Net datasets "
                   "(pre-training on the images you evaluate on is transductive)")
    p.add_argument("--batch-size", type=batch_size, default=2, help="the plan's batch size")
    p.add_argument("-np", type=int, default=1, help="parallel processes")
    p.set_defaults(func=cmd_pretrain_dataset_create)


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Write a pre-training checkpoint in nnssl's format: checkpoint_final.pth (loadable with "
                     "torch.load(weights_only=True)), adaptation_plan.json and config.json, as an nnssl model "
                     "repository holds them, for nnU-Net master's nnUNetv2_preprocess_like_nnssl / PretrainedTrainer "
                     "and nnssl's tools. Residual-encoder and Primus pre-training only (nnUNetTrainer*Pretrain_ResEnc, "
                     "..._Primus).")
    p.add_argument("checkpoint", help="checkpoint_final.pth of a pre-training run")
    p.add_argument("--format", choices=["nnssl"], required=True)
    p.add_argument("-o", "--output", required=True, help="folder to write into (created if missing)")
    p.set_defaults(func=cmd_export)


def pretrain_plan_arguments(p: argparse.ArgumentParser) -> None:
    from nnunet_mim.pretraining import memory
    p.description = ("What the pre-training trainers will run on a GPU of the given memory: the micro-batch, the "
                     "accumulation that keeps the effective batch, whether the conv blocks are checkpointed, and the "
                     "predicted peak; or why nothing fits and what to change. The trainers make the same choice "
                     "from the same prediction on the GPU they get.\n\n" + memory.__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("dataset", nargs="?", help="nnU-Net dataset ID or name (planned)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier, as nnUNetv2_train -p")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="a planned patch, instead of a "
                   "dataset")
    p.add_argument("--batch", type=int, help="the planned batch, with --patch")
    p.add_argument("--gpu-memory", type=float, nargs="+", default=[24, 40, 80, 141], metavar="GIB",
                   help="GPU memory sizes in GiB (default: 24 40 80 141)")
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainerMiMPretrain", "nnUNetTrainerMAEPretrain"])
    p.set_defaults(func=cmd_pretrain_plan)


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Builds a small labelled dataset from the MNI152 template shipped with nilearn, then runs "
                     "nnU-Net planning, MiM pre-training, fine-tuning, the matched from-scratch run and "
                     "nnUNetv2_predict on held-out cases, and prints their Dice. Uses its own nnU-Net folders "
                     "inside --work-folder.")
    p.add_argument("--work-folder", default="nnunet_mim_demo", help="empty or new folder for all outputs "
                   "(default: ./nnunet_mim_demo)")
    p.add_argument("--pretrain-trainer", default="nnUNetTrainerMiMPretrain_T_CPUdemo")
    p.add_argument("--finetune-trainer", default="nnUNetTrainerMiMFinetune_T_CPUdemo")
    p.add_argument("--scratch-trainer", default="nnUNetTrainerMiMScratch_T_CPUdemo")
    p.set_defaults(func=cmd_demo)


# name: (one line for `nnunet-mim --help`, the function that fills in its parser)
COMMANDS = {
    "env": ("print the shell line that lets nnU-Net find the nnunet-mim trainers", env_arguments),
    "check": ("check that nnU-Net finds the trainers; say what is missing", check_arguments),
    "trainers": ("list the trainers to run with nnUNetv2_train -tr, one line each", trainers_arguments),
    "adapt-checkpoint": ("adapt a pre-training checkpoint: other input channels, or a supervised encoder",
                         adapt_checkpoint_arguments),
    "benchmark": ("matched comparison: stock nnU-Net, scratch, MAE, MiM, MiM without alignment, at several label "
                  "fractions", benchmark_arguments),
    "compare": ("one table from several finished benchmarks (e.g. MiM pre-trained two ways, or two label fractions "
                "run apart)", compare_arguments),
    "export": ("write a residual-encoder or Primus pre-training checkpoint in nnssl's format (nnU-Net master's and "
               "nnssl's fine-tuning read it)", export_arguments),
    "pretrain-plan": ("predict a pre-training step's GPU memory for a dataset's plan: the micro-batch each GPU size "
                      "gets, or why nothing fits", pretrain_plan_arguments),
    "example-dataset": ("write a labelled example dataset built from a template that installs offline (for trying "
                        "things and for benchmarks)", example_dataset_arguments),
    "pretrain-dataset": ("build a pre-training dataset from nnU-Net datasets and folders of unlabeled images "
                         "(NIfTI, NRRD, MHA, DICOM series)", pretrain_dataset_arguments),
    "demo": ("pre-train, fine-tune, predict and report Dice on a built-in example (CPU)", demo_arguments),
    "train": ("nnUNetv2_train, preemptible (SIGUSR1/SIGTERM: checkpoint, exit 75) and under torchrun on several "
              "nodes; takes nnUNetv2_train's arguments", None),
}


def build_parser(commands: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """The command line, with the arguments of ``commands`` filled in. Filling one in imports what its
    description and choices come from (torch, timm, nnU-Net: seconds), so main fills in only the one
    that runs, and `nnunet-mim env` answers at once."""
    parser = argparse.ArgumentParser(prog="nnunet-mim", description="MiM / MAE self-supervised pre-training for "
                                     "nnU-Net v2. Training itself runs through nnUNetv2_train -tr <trainer>.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, fill_in) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_line)
        if name in commands and fill_in is not None:
            fill_in(command_parser)
    return parser


def main(argv=None) -> int:
    # Importing timm (every subcommand that builds or reads the network) warns about timm's own use
    # of torch.jit.interface, on every call: nothing a user of this command can act on.
    warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the first positional
    if command == "train":  # nnUNetv2_train's own arguments, parsed (and explained by -h) there
        from nnunet_mim.train import main as train
        return train(argv[argv.index("train") + 1:])
    args = build_parser([command]).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
