"""``nnunet-mim benchmark``: does pre-training help on this dataset, and by how much?

For one preprocessed nnU-Net dataset, label fractions and folds, it trains five arms with the
same plan, budget, seeds and folds, through nnU-Net's own commands:

    nnU-Net      stock nnUNetTrainer (the reference CNN), same budget
    scratch      nnUNetTrainerMiMScratch: the hybrid network from random weights
    MAE          MAE self pre-training, then nnUNetTrainerMiMFinetune
    MiM          MiM self pre-training, then nnUNetTrainerMiMFinetune
    MiM-noalign  MiM without cross-level alignment (ablation), then fine-tuning

and, when asked for with --schedule, scratch-default: scratch at the default schedule, the
random network at its own schedule beside the matched one (every arm's mean Dice is compared
with it too, in a second table under the main one).

Self pre-training uses the images of all training cases (labels never), once per method;
``--pretrain-dataset`` pre-trains on another planned dataset instead (e.g. a collection made with
``nnunet-mim pretrain-dataset create``); ``--pretrained-weights ARM=FILE`` fine-tunes that arm from a
checkpoint you already have instead of pre-training it.
``--schedule`` fine-tunes scratch and the pre-trained arms with one schedule variant (SCHEDULES).
``-p`` names the plans (nnUNetPlans unless given, e.g. nnUNetResEncUNetMPlans): the stock arm trains
the network they describe, the hybrid arms take their patch size and spacing.
Label fraction f keeps, in every fold, the first round(f * n) training cases of a fixed
per-fold permutation (so 10% is inside 25% is inside 100%); validation cases are unchanged.
Each fraction gets its own nnUNet_preprocessed folder (links to the dataset's files plus its own
splits_final.json) and one results folder per arm inside the work folder (the fine-tuned arms
share a trainer name): the user's folders are only read.
Scores are nnU-Net's own final validation (fold_k/validation/summary.json).
"""
# The steps of a benchmark, one module each, in the order they run:
#   spec     the user's request, checked field by field, and what it resolves to in nnU-Net's folders
#   plan     the dataset's plans and data, its folds and labelled cases, its class names
#   arms     the trainers of each arm and budget; pre-trained weights given to an arm
#   folders  where each run lives in the work folder, and the environment of its command
#   notes    what the table must be read with
#   runs     pre-training, then every arm, fraction, fold and seed through nnU-Net's commands
#   table    Dice over folds, the paired test, several benchmarks put together
from nnunet_mim.benchmark.arms import (ARM_CHOICES, ARMS, BUDGETS, SCHEDULES, SCRATCH_DEFAULT, Budget,  # noqa: F401
                                       GivenWeights, arm_trainer, given_pretrained_weights)
from nnunet_mim.benchmark.plan import (BenchmarkError, class_names, cross_validation_splits,  # noqa: F401
                                       data_loading_note, label_fraction_splits, plans_file,
                                       preprocessed_data_folder)
from nnunet_mim.benchmark.runs import LOG_TAIL_LINES, DownstreamBenchmark  # noqa: F401
from nnunet_mim.benchmark.spec import BenchmarkInputs, BenchmarkSpec, resolve  # noqa: F401
from nnunet_mim.benchmark.table import (RESULTS_NAME, arms_in, differing_arms, mean_dice_against,  # noqa: F401
                                        merge_benchmarks, paragraphs, read_runs, summarise, titled_init_seed,
                                        write_outputs)
