"""The downstream benchmark harness: label-fraction splits, the summary maths, and a real run of
all five arms through nnU-Net at the smoke budget whose table rows match the runs."""
import csv
import math
import os
import sys

import pytest

from helpers import run
from nnunet_mim.benchmark import ARMS, class_names, data_loading_note, label_fraction_splits, summarise
from nnunet_mim.benchmark.notes import schedule_note


def benchmark(*fields, **named):
    """The benchmark of a spec made of ``fields`` (in BenchmarkSpec's order) and ``named``."""
    from nnunet_mim.benchmark import BenchmarkSpec, DownstreamBenchmark
    return DownstreamBenchmark(BenchmarkSpec(*fields, **named))


@pytest.fixture
def benchmark_env(nnunet_env, monkeypatch):
    """The session's planned example dataset (Dataset991_E2E) as nnU-Net's raw and preprocessed folders."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, nnunet_env[key])
    return nnunet_env


def test_label_fraction_splits_are_nested_and_keep_validation():
    splits = [{"train": [f"c{i}" for i in range(20) if i % 5 != k], "val": [f"c{i}" for i in range(20) if i % 5 == k]}
              for k in range(5)]
    small, large = label_fraction_splits(splits, 0.25, 0), label_fraction_splits(splits, 0.5, 0)
    for k in range(5):
        assert len(small[k]["train"]) == 4 and len(large[k]["train"]) == 8
        assert set(small[k]["train"]) <= set(large[k]["train"]) <= set(splits[k]["train"])
        assert small[k]["val"] == splits[k]["val"]
    assert label_fraction_splits(splits, 0.25, 0) == small  # seeded
    assert label_fraction_splits(splits, 0.25, 1) != small


def test_splits_hold_plain_strings_that_messages_print_as_names(tmp_path):
    """nnU-Net's own split gives numpy strings, shown as np.str_('case') in every message and file."""
    from nnunet_mim.benchmark import cross_validation_splits
    for i in range(6):
        (tmp_path / f"case_{i}.pkl").write_bytes(b"")
    splits = cross_validation_splits(str(tmp_path), str(tmp_path))
    drawn = label_fraction_splits(splits, 0.5, 0)
    cases = [c for split in splits + drawn for part in split.values() for c in part]
    assert len(cases) > 30 and {type(c) for c in cases} == {str}
    assert "np.str_" not in str(drawn)


def said_before_the_runs(bench, monkeypatch, capsys) -> str:
    """What ``bench.run()`` prints before its first run, with training stubbed out."""
    from nnunet_mim.benchmark import BenchmarkError, DownstreamBenchmark

    def no_training(*args, **kwargs):
        raise BenchmarkError("stub: nothing trains")
    monkeypatch.setattr(DownstreamBenchmark, "train", no_training)
    with pytest.raises(BenchmarkError, match="stub"):
        bench.run()
    bench.log.close()
    return capsys.readouterr().out


def test_the_benchmark_says_when_arms_will_not_see_the_same_data(benchmark_env, tmp_path, monkeypatch, capsys):
    """nnU-Net's background loaders are unseeded: only single-process loading gives every arm the same
    crops, so the benchmark says so before its runs (not before a report, which trains nothing)."""
    assert data_loading_note({"nnUNet_n_proc_DA": "0"}) is None
    assert "nnUNet_n_proc_DA=0" in data_loading_note({"nnUNet_n_proc_DA": "4"})
    for n_proc, report_only, said in ((None, False, True), ("0", False, False), (None, True, False)):
        if n_proc is None:
            monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
        else:
            monkeypatch.setenv("nnUNet_n_proc_DA", n_proc)
        bench = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"),
                                    arms=["scratch"], device="cpu", report_only=report_only)
        assert ("NOTE: nnUNet_n_proc_DA is not 0" in said_before_the_runs(bench, monkeypatch, capsys)) == said


def test_a_shared_non_default_schedule_is_said_before_the_runs_and_under_the_table(benchmark_env, tmp_path,
                                                                                  monkeypatch, capsys):
    """Decoder-first (or layer decay) fine-tunes scratch too: the match is exact, but the table then
    compares every arm at the pre-trained arms' schedule, so the benchmark says how to add scratch at
    its own schedule; nothing is said where no pre-trained arm shares it."""

    def bench(schedule, arms):
        return benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "cpu", str(tmp_path / "w"),
                                   arms=arms, device="cpu", schedule=schedule)
    for schedule, arms in (("default", ["scratch", "MiM"]), ("decoder-first", ["MiM"]),
                           ("decoder-first", ["scratch", "nnU-Net"])):
        unshared = bench(schedule, arms)
        unshared.log.close()
        assert schedule_note(unshared.spec, unshared.pretrained_methods) is None
    shared = bench("decoder-first", ["scratch", "MiM"])
    assert "--schedule decoder-first fine-tunes scratch" in schedule_note(shared.spec, shared.pretrained_methods)
    # written under the results table
    assert schedule_note(shared.spec, shared.pretrained_methods) in shared.table_notes()
    assert "NOTE: --schedule decoder-first" in said_before_the_runs(shared, monkeypatch, capsys)


def test_scratch_default_puts_scratch_at_its_own_schedule_beside_the_matched_one(benchmark_env, tmp_path,
                                                                                 monkeypatch, capsys):
    """With --schedule decoder-first, the arm scratch-default trains scratch at the default schedule
    (reusing the runs of a default-schedule benchmark in the work folder), and the command's table
    then compares every arm with it too; with the default schedule it is refused, being scratch."""
    from nnunet_mim.benchmark import BenchmarkError, DownstreamBenchmark
    from nnunet_mim.cli import main
    work = str(tmp_path / "w")

    def bench(schedule, arms):
        made = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "cpu", work, arms=arms,
                                   device="cpu", schedule=schedule)
        made.log.close()
        return made
    default, scheduled = bench("default", ["scratch"]), bench("decoder-first", ["scratch", "scratch-default", "MiM"])
    assert scheduled.trainer("scratch-default") == default.trainer("scratch") != scheduled.trainer("scratch")
    assert scheduled.trainer("scratch").endswith("_DecoderFirst")
    # runs shared
    assert scheduled.folders.fraction_env(1.0, "scratch-default") == default.folders.fraction_env(1.0, "scratch")
    # the table holds scratch at both schedules
    assert schedule_note(scheduled.spec, scheduled.pretrained_methods) is None
    with pytest.raises(BenchmarkError, match="scratch-default is scratch at the default schedule"):
        bench("default", ["scratch", "scratch-default", "MiM"])

    dice = {"scratch": [0.60, 0.70, 0.65], "scratch-default": [0.66, 0.71, 0.69], "MiM": [0.64, 0.69, 0.70]}
    rows = [{"arm": arm, "fraction": 1.0, "fold": fold, "trainer": "t", "class": cls, "label": label, "dice": d}
            for arm, values in dice.items() for fold, d in enumerate(values)
            for cls, label in (("grey_matter", "1"), ("mean", ""))]
    monkeypatch.setattr(DownstreamBenchmark, "run", lambda self: (rows, []))
    assert main(["benchmark", "991", "--budget", "cpu", "--schedule", "decoder-first", "--arms", "scratch",
                 "scratch-default", "MiM", "--folds", "0", "1", "2", "--work-folder", work]) == 0
    table = capsys.readouterr().out.split("Mean Dice against scratch-default:")
    assert len(table) == 2 and "| vs scratch |" in table[0]  # the matched comparison stays the main table
    against = [line for line in table[1].splitlines() if line.startswith("| 100% |")]
    mim_minus_default = sum(m - s for m, s in zip(dice["MiM"], dice["scratch-default"])) / 3
    assert [line.split(" | ")[1:3] for line in against] == [["mean", arm] for arm in dice]  # mean Dice only
    assert against[2].split(" | ")[7] == f"{mim_minus_default:+.3f}"


def test_class_names_match_nnunet_summary_keys_for_labels_and_regions():
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    labels = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3}
    manager = LabelManager(labels, regions_class_order=[1, 2, 3])
    keys = [label_or_region_to_key(r) for r in manager.foreground_regions]  # as nnU-Net writes summary.json
    assert [class_names(labels)[k] for k in keys] == ["whole_tumor", "tumor_core", "enhancing"]
    assert class_names({"background": 0, "liver": 1})["1"] == "liver"


def test_summary_pairs_folds_against_scratch():
    rows = [{"arm": arm, "fraction": 0.5, "fold": fold, "class": "mean", "dice": dice}
            for arm, values in {"scratch": [0.5, 0.6, 0.7], "MiM": [0.6, 0.65, 0.8]}.items()
            for fold, dice in enumerate(values)]
    table = {e["arm"]: e for e in summarise(rows)}
    assert math.isclose(table["MiM"]["mean"], (0.6 + 0.65 + 0.8) / 3)
    assert math.isclose(table["MiM"]["diff_vs_reference"], (0.1 + 0.05 + 0.1) / 3)
    assert 0 < table["MiM"]["p_vs_reference"] < 1
    assert math.isnan(table["scratch"]["diff_vs_reference"])
    other = {e["arm"]: e for e in summarise(rows, reference="MiM")}
    assert math.isclose(other["scratch"]["diff_vs_reference"], -(0.1 + 0.05 + 0.1) / 3)


def test_pretraining_on_another_dataset(benchmark_env, tmp_path, monkeypatch):
    """--pretrain-dataset: refused with the missing plan named until that dataset is planned; then
    the pre-training runs on it."""
    import shutil
    with pytest.raises(RuntimeError, match="Dataset995_Pre/nnUNetPlans.json not found"):
        benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"),
                            pretrain_dataset="Dataset995_Pre")
    with pytest.raises(RuntimeError, match="Dataset991_E2E/nnUNetResEncUNetXLPlans.json not found.*with -p"):
        benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"),
                            plans="nnUNetResEncUNetXLPlans")
    preprocessed = tmp_path / "pre"
    shutil.copytree(benchmark_env["nnUNet_preprocessed"], preprocessed, symlinks=True)
    (preprocessed / "Dataset995_Pre").mkdir()
    shutil.copy(preprocessed / "Dataset991_E2E" / "nnUNetPlans.json", preprocessed / "Dataset995_Pre")
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    bench = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"),
                                arms=["MiM"], pretrain_dataset="Dataset995_Pre")
    calls = []
    monkeypatch.setattr(bench, "train", lambda env, trainer, fold, pretrained=None, dataset=None, plans=None:
                        calls.append((trainer, fold, dataset, plans)) or str(tmp_path))
    bench.pretrain("MiM")
    assert calls == [("nnUNetTrainerMiMPretrain_T_CPUsmoke", "all", "Dataset995_Pre", "nnUNetPlans")]
    # in one work folder, fine-tuned runs of the two pre-trainings never share a results folder;
    # scratch runs, which do not depend on pre-training, are shared
    own = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"))
    results = {name: {arm: b.folders.fraction_env(1.0, arm)["nnUNet_results"] for arm in ("scratch", "MiM")}
               for name, b in (("own", own), ("other", bench))}
    assert results["own"]["scratch"] == results["other"]["scratch"]
    assert results["own"]["MiM"] != results["other"]["MiM"]


def save_pretraining_checkpoint(path, method, **extras):
    """A checkpoint as pre-training writes it, as far as the benchmark reads one before its runs."""
    import torch
    from nnunet_mim.pretraining_record import PretrainingRecord
    record = PretrainingRecord(method=method, preset="T", decoder_pretrained=False, input_channels=1,
                               patch_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0), epochs=5)
    torch.save({"network_weights": {"pretraining_record": record.to_tensor()},
                "nnunet_mim": {"method": method, **extras}}, path)
    return str(path)


def test_given_pretrained_weights_replace_that_arms_pretraining(benchmark_env, tmp_path, monkeypatch):
    """--pretrained-weights MAE=FILE: MAE fine-tunes from FILE and is not pre-trained, while MiM still
    is; MAE's runs get results folders named by the file's bytes (other weights, or the benchmark's
    own MAE pre-training, never reuse them), and the table notes name the file and what it holds."""
    import torch
    from dataclasses import asdict
    from nnunet_mim.masking import LevelConfig
    weights = save_pretraining_checkpoint(tmp_path / "mae60.pth", "MAE", alignment_weight=0.0,
                                          levels=asdict(LevelConfig(num_levels=1, l1_mask_ratio=0.6)))
    settings = dict(dataset="Dataset991_E2E", configuration="3d_fullres", folds=[0], fractions=[1.0],
                    budget="smoke", work_folder=str(tmp_path / "w"), arms=["scratch", "MAE", "MiM"], device="cpu")
    given = benchmark(**settings, pretrained_weights={"MAE": weights})
    assert given.pretrained_methods == ["MiM"]
    calls = []
    monkeypatch.setattr(given, "train", lambda env, trainer, fold, pretrained=None, dataset=None, plans=None:
                        calls.append((trainer, fold, pretrained)) or str(tmp_path / "run"))
    monkeypatch.setattr(given, "scores", lambda folder, run: [])
    given.run()
    given.log.close()
    mim_pretraining = os.path.join(str(tmp_path / "run"), "checkpoint_final.pth")
    assert calls == [("nnUNetTrainerMiMPretrain_T_CPUsmoke", "all", None),
                     (given.trainer("scratch"), 0, None), (given.trainer("MAE"), 0, weights),
                     (given.trainer("MiM"), 0, mim_pretraining)]
    note = given.table_notes()[0]
    assert note.startswith(f"MAE: fine-tuned from {weights} (MAE pre-training") and "mask ratio 0.6" in note
    own = benchmark(**settings)
    other_bytes = torch.load(weights, weights_only=False)
    other_bytes["nnunet_mim"]["note"] = "another file"
    torch.save(other_bytes, tmp_path / "other.pth")
    other = benchmark(**settings, pretrained_weights={"MAE": str(tmp_path / "other.pth")})
    folders = {arm: [b.folders.fraction_env(1.0, arm)["nnUNet_results"] for b in (given, own, other)]
               for arm in ("scratch", "MAE", "MiM")}
    assert len(set(folders["MAE"])) == 3
    assert len(set(folders["scratch"])) == 1 and len(set(folders["MiM"])) == 1


def test_given_pretrained_weights_that_do_not_belong_to_the_arm_are_refused(benchmark_env, tmp_path):
    import torch
    from nnunet_mim.benchmark import BenchmarkError
    mae = save_pretraining_checkpoint(tmp_path / "mae.pth", "MAE", alignment_weight=0.0)
    mim = save_pretraining_checkpoint(tmp_path / "mim.pth", "MiM", alignment_weight=0.1)
    old_mim = save_pretraining_checkpoint(tmp_path / "old_mim.pth", "MiM")  # before the alignment weight was kept
    torch.save({"network_weights": {"pretraining_record": torch.zeros(16)}}, tmp_path / "never.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    finetuned = torch.load(mae, weights_only=False)  # a segmentation run's checkpoint, fine-tuned from MAE
    del finetuned["nnunet_mim"]
    finetuned.update(trainer_name="nnUNetTrainerMiMFinetune_T_CPUxlong", init_args={})
    torch.save(finetuned, tmp_path / "finetuned.pth")
    mistakes = {"scratch is not a pre-trained arm": {"scratch": mae},
                "the arm MiM-noalign is not run": {"MiM-noalign": mim},
                "no such file": {"MAE": str(tmp_path / "missing.pth")},
                "cannot read the pre-trained checkpoint": {"MAE": str(tmp_path / "corrupt.pth")},
                "holds a network never pre-trained": {"MAE": str(tmp_path / "never.pth")},
                r"segmentation run \(nnUNetTrainerMiMFinetune_T_CPUxlong, trained with labels from MAE pre-training\)":
                    {"MAE": str(tmp_path / "finetuned.pth")},
                "holds MiM pre-training, not MAE's": {"MAE": mim},
                "holds MiM pre-training, not MiM-noalign's": {"MiM-noalign": mim}}
    for message, given in mistakes.items():
        arms = ["scratch", "MAE", "MiM"] + (["MiM-noalign"] if "MiM-noalign" in given and "not run" not in message
                                             else [])
        with pytest.raises(BenchmarkError, match=message):
            benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"), arms=arms,
                                pretrained_weights=given)
    from nnunet_mim.cli import main
    assert main(["benchmark", "991", "--arms", "MAE", "--pretrained-weights", f"MAE={mae}", f"MAE={mae}"]) == 2
    for arm in ("MiM", "MiM-noalign"):  # an older MiM checkpoint does not say whether it aligned
        benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"), arms=[arm],
                            pretrained_weights={arm: old_mim}).log.close()


@pytest.mark.parametrize("base, other", [("cpu-long", "cpu-long-pretrain300"), ("cpu-long", "cpu-long-pretrain25"),
                                         ("cpu-xlong", "cpu-xlong-pretrain300")])
def test_another_pretraining_length_never_reuses_the_other_ones_runs(benchmark_env, tmp_path, base, other):
    """cpu-long-pretrain300/25 (cpu-xlong-pretrain300) fine-tune with cpu-long's (cpu-xlong's)
    trainers and pre-train 3x longer / 4x shorter: in one work folder their fine-tuned arms get
    their own results folders and pre-training runs, while scratch and the stock runs, which do not
    depend on pre-training, are shared."""
    from nnunet_mim import variants
    from nnunet_mim.benchmark import BUDGETS
    long, other_length = (benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], budget,
                                              str(tmp_path / "w")) for budget in (base, other))
    for arm in ("nnU-Net", "scratch", "MAE", "MiM", "MiM-noalign"):
        assert long.trainer(arm) == other_length.trainer(arm)
        same_folder = (long.folders.fraction_env(1.0, arm)["nnUNet_results"]
                       == other_length.folders.fraction_env(1.0, arm)["nnUNet_results"])
        assert same_folder == (arm not in BUDGETS[base].pretrain), arm
    for method, trainer in BUDGETS[other].pretrain.items():
        assert trainer != BUDGETS[base].pretrain[method]
        assert getattr(variants, trainer).epochs != getattr(variants, BUDGETS[base].pretrain[method]).epochs


def test_a_schedule_applies_to_scratch_and_the_pretrained_arms_alike(benchmark_env, tmp_path, monkeypatch):
    """--schedule: scratch and every fine-tuned arm get the same schedule variant (so they still
    differ only in their initial weights), the stock arm keeps nnU-Net's own; every schedule exists
    at the cpu, cpu-long, cpu-xlong, cpu-xxlong and gpu budgets, and a budget without one is refused by name."""
    from nnunet_mim import variants
    from nnunet_mim.benchmark import BUDGETS, SCHEDULES, Budget, BenchmarkError
    from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMScratch
    for budget in ("cpu", "cpu-long", "cpu-xlong", "cpu-xxlong", "gpu"):
        for schedule in SCHEDULES:
            bench = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], budget, str(tmp_path / "w"),
                                        schedule=schedule)
            assert bench.trainer("MAE") == bench.trainer("MiM-noalign") == bench.trainer("MiM")
            assert bench.trainer("nnU-Net") == BUDGETS[budget].stock
            scratch, finetune = getattr(variants, bench.trainer("scratch")), getattr(variants, bench.trainer("MiM"))
            assert issubclass(scratch, nnUNetTrainerMiMScratch) and not issubclass(finetune, nnUNetTrainerMiMScratch)
            for setting in ("encoder_frozen_fraction", "layer_decay", "peak_lr", "epochs", "encoder_preset"):
                assert getattr(scratch, setting) == getattr(finetune, setting), (budget, schedule, setting)
            frozen = {"decoder-first": variants.DecoderFirst.encoder_frozen_fraction,
                      "frozen-encoder": 1.0}.get(schedule, 0.0)
            decay = variants.LayerDecay.layer_decay if schedule == "layer-decay" else 1.0
            assert (finetune.encoder_frozen_fraction, finetune.layer_decay) == (frozen, decay)
    # a budget of trainers that have no schedule variants (e.g. one a user adds for their own trainers)
    monkeypatch.setattr(variants, "MyScratchTrainer", variants.nnUNetTrainerMiMScratch, raising=False)
    monkeypatch.setattr(variants, "MyFinetuneTrainer", variants.nnUNetTrainerMiMFinetune, raising=False)
    monkeypatch.setitem(BUDGETS, "plain", Budget("nnUNetTrainer", "MyScratchTrainer", "MyFinetuneTrainer",
                                                  BUDGETS["gpu"].pretrain))
    with pytest.raises(BenchmarkError, match="budget 'plain' has no 'decoder-first' schedule"):
        benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "plain", str(tmp_path / "w"),
                            schedule="decoder-first")


def test_each_label_draw_has_its_own_folders(benchmark_env, tmp_path):
    """--seed N in a work folder that holds seed 0's runs gets its own label subsets and results,
    never seed 0's; a folder whose subsets no longer match the splits is refused, not reused."""
    import json
    work = str(tmp_path / "w")
    first, second = (benchmark("Dataset991_E2E", "3d_fullres", [0], [0.5], "smoke", work, seed=seed)
                     for seed in (0, 1))
    envs = [bench.folders.fraction_env(0.5, "scratch") for bench in (first, second)]
    assert envs[0]["nnUNet_results"] != envs[1]["nnUNet_results"]
    split_files = [os.path.join(env["nnUNet_preprocessed"], "Dataset991_E2E", "splits_final.json") for env in envs]
    drawn = [json.load(open(path)) for path in split_files]
    assert drawn == [label_fraction_splits(first.inputs.base_splits, 0.5, seed) for seed in (0, 1)]
    assert drawn[0] != drawn[1]
    with open(split_files[0], "w") as f:
        json.dump(drawn[1], f)
    with pytest.raises(RuntimeError, match="other label subsets"):
        first.folders.fraction_env(0.5, "scratch")


def test_each_init_seed_has_its_own_runs_and_one_pretraining(benchmark_env, tmp_path, monkeypatch):
    """--init-seed N: every fine-tuning run gets NNUNET_MIM_SEED=N and results folders of its own (a
    work folder that holds seed 0's runs never hands them out as seed N's); pre-training runs at seed 0
    for every N, in the one pre-training folder."""
    from nnunet_mim.benchmark import BenchmarkError, DownstreamBenchmark
    from nnunet_mim.seeding import SEED_VARIABLE
    work = str(tmp_path / "w")
    first, other = (benchmark("Dataset991_E2E", "3d_fullres", [0], [0.5], "smoke", work, init_seeds=[seed])
                    for seed in (0, 3))
    for arm in ("nnU-Net", "scratch", "MAE", "MiM", "MiM-noalign"):
        envs = [bench.folders.fraction_env(0.5, arm) for bench in (first, other)]
        assert [env[SEED_VARIABLE] for env in envs] == ["0", "3"]
        assert envs[0]["nnUNet_results"] != envs[1]["nnUNet_results"], arm
    pretrainings = []
    monkeypatch.setattr(DownstreamBenchmark, "train", lambda self, env, trainer, fold, *a, **k:
                        pretrainings.append((env[SEED_VARIABLE], env["nnUNet_results"])) or "folder")
    for bench in (first, other):
        bench.pretrain("MiM")
    assert pretrainings[0] == pretrainings[1] and pretrainings[0][0] == "0"
    for bad in ([-1], [2, 2], []):
        with pytest.raises(BenchmarkError, match="--init-seed takes distinct seeds of 0 or more"):
            benchmark("Dataset991_E2E", "3d_fullres", [0], [0.5], "smoke", work, init_seeds=bad)


def test_several_init_seeds_average_each_fold_before_the_paired_test(benchmark_env, tmp_path, monkeypatch, capsys):
    """--init-seed 0 3: every arm runs every fold at both seeds (seed 0's runs first, each seed in its
    own folders, at NNUNET_MIM_SEED=seed); the table compares each fold's mean over the seeds, paired
    over folds, and the per-fold table shows each seed's runs and their means."""
    from scipy.stats import ttest_rel

    from nnunet_mim.benchmark import DownstreamBenchmark
    from nnunet_mim.cli import main
    from nnunet_mim.seeding import SEED_VARIABLE
    dice = {("scratch", 0): [0.50, 0.60, 0.70], ("scratch", 3): [0.56, 0.58, 0.64],
            ("MiM", 0): [0.62, 0.61, 0.72], ("MiM", 3): [0.52, 0.66, 0.71]}
    calls = []

    def train(self, env, trainer, fold, pretrained=None, dataset=None, plans=None):
        calls.append((fold, env[SEED_VARIABLE], env["nnUNet_results"]))
        return os.path.join(env["nnUNet_results"], f"fold_{fold}")
    monkeypatch.setattr(DownstreamBenchmark, "train", train)
    monkeypatch.setattr(DownstreamBenchmark, "scores", lambda self, folder, run: [
        dict(run, **{"class": "mean", "label": "", "dice": dice[run["arm"], run["init_seed"]][run["fold"]]})])
    results = tmp_path / "results"
    assert main(["benchmark", "991", "--budget", "smoke", "--arms", "scratch", "MiM", "--folds", "0", "1", "2",
                 "--fractions", "0.5", "--init-seed", "0", "3", "--work-folder", str(tmp_path / "w"),
                 "--results-folder", str(results)]) == 0
    runs = calls[1:]  # after MiM's one pre-training
    assert [(fold, seed) for fold, seed, _ in runs] == [(f, s) for s in ("0", "3") for f in (0, 1, 2) for _ in "ab"]
    folders = {seed: {folder for _, s, folder in runs if s == seed} for seed in ("0", "3")}
    assert len(folders["0"]) == len(folders["3"]) == 2 and not folders["0"] & folders["3"]
    printed = capsys.readouterr().out
    assert "budget 'smoke', schedule default, folds [0, 1, 2], seed 0, init seeds 0 3" in printed  # the title
    means = {arm: [(a + b) / 2 for a, b in zip(dice[arm, 0], dice[arm, 3])] for arm in ("scratch", "MiM")}
    with open(results / "downstream.csv") as f:
        table = {e["arm"]: e for e in csv.DictReader(f)}
    assert table["MiM"]["init_seeds"] == "0 3" and table["MiM"]["folds"] == "3"
    assert math.isclose(float(table["MiM"]["mean"]), sum(means["MiM"]) / 3)
    assert math.isclose(float(table["MiM"]["diff_vs_reference"]), (sum(means["MiM"]) - sum(means["scratch"])) / 3)
    assert math.isclose(float(table["MiM"]["p_vs_reference"]), ttest_rel(means["MiM"], means["scratch"]).pvalue)
    assert "| 50% | MiM, init seed 3 | 0.520 | 0.660 | 0.710 |" in printed
    assert "| 50% | MiM, mean of 2 seeds | 0.570 | 0.635 | 0.715 |" in printed
    with open(results / "downstream_runs.csv") as f:
        assert {(r["arm"], r["label_seed"], r["init_seed"], r["pretraining"]) for r in csv.DictReader(f)} == {
            (arm, "0", seed, pretraining)  # label draw 0 (--seed), both init seeds
            for arm, pretraining in (("scratch", ""), ("MiM", "MiM")) for seed in ("0", "3")}


def test_report_only_trains_nothing(benchmark_env, tmp_path):
    """--report-only on a work folder without the runs fails, naming the missing run, and starts no
    nnU-Net training, not even the pre-training (finished runs are reported: test_decathlon_task)."""
    bench = benchmark("Dataset991_E2E", "3d_fullres", [0], [0.5], "smoke", str(tmp_path / "w"),
                                arms=["MiM"], device="cpu", report_only=True)
    with pytest.raises(RuntimeError, match="--report-only trains nothing, and .*/MiM/.*fold_0 holds no finished run"):
        bench.run()
    bench.log.close()
    with open(tmp_path / "w" / "benchmark.log") as f:
        assert "nnUNetv2_train" not in f.read()
    assert not os.path.exists(tmp_path / "w" / "pretraining")


def test_bad_input_is_refused_by_name_before_any_run(benchmark_env, tmp_path, capsys):
    """Every mistake is told in one line naming it, without a traceback, before hours of runs; a
    misspelt pre-trained arm in particular, which would otherwise fine-tune from random weights
    under its name."""
    from nnunet_mim.benchmark import BenchmarkError
    from nnunet_mim.cli import main
    work = str(tmp_path / "w")
    mistakes = {"unknown arms \\['mim'\\]": dict(arms=["mim"]),
                "label fractions must lie in \\(0, 1\\]": dict(fractions=[25]),
                "folds \\[0, 5\\]: Dataset991_E2E's split has folds 0-4": dict(folds=[0, 5]),
                "has no configuration '2d_typo'": dict(configuration="2d_typo")}
    for message, mistake in mistakes.items():
        settings = dict(dataset="Dataset991_E2E", configuration="3d_fullres", folds=[0], fractions=[1.0],
                        budget="smoke", work_folder=work)
        with pytest.raises(BenchmarkError, match=message):
            benchmark(**dict(settings, **mistake))
    with pytest.raises(SystemExit) as stop:  # the command line refuses the arm before building anything
        main(["benchmark", "991", "--arms", "scratch", "mim", "--work-folder", work])
    assert stop.value.code == 2 and "invalid choice: 'mim'" in capsys.readouterr().err
    assert main(["benchmark", "979", "--budget", "smoke", "--work-folder", work]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "979" in error and "Traceback" not in error


def test_a_failed_run_shows_the_end_of_its_output(benchmark_env, tmp_path, monkeypatch):
    """When nnUNetv2_train fails, the error carries the last lines of its output (nnU-Net's
    exception) and names the log holding all of it."""
    import subprocess
    from nnunet_mim.benchmark import LOG_TAIL_LINES, BenchmarkError
    output = [f"epoch {i}" for i in range(40)] + ["Traceback (most recent call last):", "RuntimeError: out of memory"]

    def failing_train(args, env, stdout, stderr):
        stdout.write("\n".join(output) + "\n")
        stdout.flush()
        return subprocess.CompletedProcess(args, 1)

    bench = benchmark("Dataset991_E2E", "3d_fullres", [0], [1.0], "smoke", str(tmp_path / "w"),
                                arms=["scratch"], device="cpu")
    monkeypatch.setattr("nnunet_mim.benchmark.runs.subprocess.run", failing_train)
    with pytest.raises(BenchmarkError, match="(?s)nnUNetv2_train .* failed.*benchmark.log") as failure:
        bench.run()
    shown = str(failure.value).splitlines()[1:]
    assert [line.strip() for line in shown] == output[-LOG_TAIL_LINES:]


@pytest.mark.slow  # 13 nnU-Net runs: about 6 minutes on 2 cores; `python -m pytest -m slow`
def test_all_arms_run_and_the_table_matches_the_runs(nnunet_env, tmp_path):
    work = tmp_path / "bench"
    user_dataset = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E")
    before = sorted(os.listdir(user_dataset))
    result = run([sys.executable, "-m", "nnunet_mim.cli", "benchmark", "991", "--budget", "smoke", "--folds", "0",
                  "1", "--fractions", "0.5", "--device", "cpu", "--work-folder", str(work)], nnunet_env)
    assert "| 50% | mean | MiM |" in result.stdout and "| 50% | grey_matter | MiM |" in result.stdout  # class names
    with open(work / "results" / "downstream_runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert {(r["arm"], r["fold"]) for r in runs} == {(a, str(k)) for a in ARMS for k in (0, 1)}
    # each row's Dice is the one nnU-Net wrote for that run
    import json
    for r in runs:
        folder = work / "labels_050pct" / "nnUNet_results" / r["arm"] / "Dataset991_E2E" / \
            f"{r['trainer']}__nnUNetPlans__3d_fullres" / f"fold_{r['fold']}"
        summary = json.load(open(folder / "validation" / "summary.json"))
        expected = summary["foreground_mean"]["Dice"] if r["class"] == "mean" else summary["mean"][r["label"]]["Dice"]
        assert math.isclose(float(r["dice"]), expected)
    # the three fine-tuned arms share a trainer name: each run must have started from its own checkpoint
    for arm, pretrainer in [("MAE", "nnUNetTrainerMAEPretrain"), ("MiM", "nnUNetTrainerMiMPretrain_"),
                            ("MiM-noalign", "nnUNetTrainerMiMPretrainNoAlign")]:
        folder = work / "labels_050pct" / "nnUNet_results" / arm / "Dataset991_E2E" / \
            "nnUNetTrainerMiMFinetune_T_CPUsmoke__nnUNetPlans__3d_fullres" / "fold_0"
        report = json.load(open(folder / "pretrained_weights_report.json"))
        assert report["pretraining"]["method"] == ("MAE" if arm == "MAE" else "MiM")
        assert f"/{pretrainer}" in report["checkpoint"], (arm, report["checkpoint"])
    # the label fraction really was applied: 4 training cases per fold -> 2
    splits = json.load(open(work / "labels_050pct" / "nnUNet_preprocessed" / "Dataset991_E2E" / "splits_final.json"))
    assert [len(s["train"]) for s in splits] == [2] * 5
    for name in ("downstream.md", "downstream.csv", "downstream.png"):
        assert os.path.isfile(work / "results" / name)
    assert sorted(os.listdir(user_dataset)) == before  # the user's preprocessed folder is only read


@pytest.mark.slow  # a benchmark script's run: two fine-tunings and a probe, minutes on 2 cores
def test_the_probe_control_freezes_the_encoder_of_the_same_fold_trained_with_all_labels(nnunet_env, tmp_path):
    """benchmarks/probe_control.py: the supervised arm's frozen encoder is, tensor for tensor, the
    one of the fold's scratch run on all its training cases, loaded as supervised pre-training;
    every probed arm is in the table, and --arms MAE leaves MiM out (MAE, the control's host, stays)."""
    import json

    import torch
    from nnunet_mim.finetuning.param_groups import NEW_PREFIXES
    work = tmp_path / "bench"
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "probe_control.py")
    args = [sys.executable, script, "991", "--budget", "smoke", "--fraction", "0.5", "--folds", "1",
            "--device", "cpu", "--work-folder", str(work)]
    refused = run(args + ["--arms", "MiM"], nnunet_env, check=False)
    assert refused.returncode == 2 and "--arms must include MAE" in refused.stderr and not work.exists()
    result = run(args + ["--arms", "MAE"], nnunet_env)
    for arm in ("scratch", "MAE", "supervised"):
        assert f"| 50% | mean | {arm} |" in result.stdout, arm
    assert "| MiM |" not in result.stdout
    assert os.listdir(work / "pretraining" / "nnUNet_results" / "Dataset991_E2E") == \
        ["nnUNetTrainerMAEPretrain_T_CPUsmoke__nnUNetPlans__3d_fullres"]  # MiM was not pre-trained

    def run_folder(labels, arm, trainer):
        return work / labels / "nnUNet_results" / arm / "Dataset991_E2E" / f"{trainer}__nnUNetPlans__3d_fullres" / \
            "fold_1"
    control = run_folder("labels_050pct", "supervised", "nnUNetTrainerMiMFinetune_T_CPUsmoke_FrozenEncoder")
    labelled = run_folder("labels_100pct", "scratch", "nnUNetTrainerMiMScratch_T_CPUsmoke")
    splits = json.load(open(work / "labels_100pct" / "nnUNet_preprocessed" / "Dataset991_E2E" / "splits_final.json"))
    assert len(splits[1]["train"]) == 4
    report = json.load(open(control / "pretrained_weights_report.json"))
    assert report["pretraining"]["method"] == "supervised"
    final, source = (torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
                     ["network_weights"] for folder in (control, labelled))
    frozen = [k for k in report["loaded"] if not k.startswith(NEW_PREFIXES)]
    assert len(frozen) > 20 and [k for k in frozen if not torch.equal(final[k], source[k])] == []


def test_compare_counts_a_shared_run_once_and_keeps_differing_runs_apart(tmp_path, capsys):
    """nnunet-mim compare: scratch reused by two benchmarks is one arm with its three folds, MiM
    pre-trained two ways is one arm per benchmark, a benchmark at another label fraction joins the
    table; every figure is the one the runs give."""
    from nnunet_mim.benchmark import write_outputs
    from nnunet_mim.cli import main

    def runs(arm, fraction, mean_dice):
        return [{"arm": arm, "fraction": fraction, "fold": fold, "trainer": "t", "class": cls, "label": label,
                 "dice": dice + offset}
                for fold, dice in enumerate(mean_dice) for cls, label, offset in (("liver", "1", 0.1), ("mean", "", 0))]
    scratch = runs("scratch", 0.25, [0.5, 0.6, 0.55])
    benchmarks = {"a": scratch + runs("MiM", 0.25, [0.6, 0.62, 0.58]),
                  "b": scratch + runs("MiM", 0.25, [0.52, 0.61, 0.57]),
                  "full": runs("scratch", 1.0, [0.8, 0.82, 0.81]) + runs("MiM", 1.0, [0.79, 0.8, 0.84])}
    for label, rows in benchmarks.items():
        write_outputs(rows, str(tmp_path / label), f"benchmark {label}")
    out = tmp_path / "out"
    args = ["compare", *(f"{label}={tmp_path / label}" for label in benchmarks), "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "- b: benchmark b" in printed
    assert "| 25% | MiM b | 0.520 | 0.610 | 0.570 |" in printed  # the per-fold pairs, as the runs give them
    with open(out / "comparison.csv") as f:
        table = {(float(e["fraction"]), e["class"], e["arm"]): e for e in csv.DictReader(f)}
    assert {arm for _, _, arm in table} == {"scratch", "MiM a", "MiM b", "MiM full"}
    assert table[0.25, "mean", "scratch"]["folds"] == "3"
    assert (1.0, "mean", "MiM a") not in table  # not run at 100%: no row, rather than an empty one
    assert math.isclose(float(table[0.25, "mean", "MiM b"]["diff_vs_reference"]), (0.02 + 0.01 + 0.02) / 3)
    assert math.isclose(float(table[1.0, "liver", "MiM full"]["diff_vs_reference"]), (-0.01 - 0.02 + 0.03) / 3)
    assert math.isclose(float(table[0.25, "mean", "MiM a"]["p_vs_reference"]),
                        next(e for e in summarise(benchmarks["a"]) if e["arm"] == "MiM" and e["class"] == "mean")
                        ["p_vs_reference"])
    assert main(args + ["--reference", "MiM a"]) == 0
    with open(out / "comparison.csv") as f:
        table = {(float(e["fraction"]), e["class"], e["arm"]): e for e in csv.DictReader(f)}
    assert math.isclose(float(table[0.25, "mean", "MiM b"]["diff_vs_reference"]), (-0.08 - 0.01 - 0.01) / 3)
    # what a user gets wrong is said, not a traceback
    assert main(args + ["--reference", "MAE"]) == 1
    assert "no arm 'MAE'" in capsys.readouterr().err
    assert main(["compare", f"x={tmp_path / 'missing'}", "-o", str(out)]) == 1
    assert "no downstream_runs.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse refuses an argument without its label
        main(["compare", str(tmp_path / "a"), "-o", str(out)])
    assert stop.value.code == 2 and "LABEL=RESULTS: expected NAME=VALUE" in capsys.readouterr().err


def test_compare_combines_the_learning_curves_as_it_combines_the_runs(tmp_path, capsys):
    """nnunet-mim compare also joins the benchmarks' learning curves: a shared scratch run once, MiM
    pre-trained two ways as one arm per benchmark (as in the Dice table), with the end-of-training
    table under the comparison; a benchmark from before curves were kept is named as such."""
    from nnunet_mim.benchmark import write_outputs
    from nnunet_mim.cli import main
    from nnunet_mim.learning_curves import end_change, write_curves

    def runs(arm, mean_dice):
        return [{"arm": arm, "fraction": 0.25, "fold": fold, "trainer": "t", "class": "mean", "label": "",
                 "dice": dice} for fold, dice in enumerate(mean_dice)]

    def curves(arm, slope):
        return [{"arm": arm, "fraction": 0.25, "fold": fold, "epoch": epoch, "pseudo_dice": slope * epoch + fold,
                 "ema_pseudo_dice": slope * epoch} for fold in (0, 1) for epoch in range(20)]
    scratch_runs, scratch_curves = runs("scratch", [0.5, 0.6]), curves("scratch", 0.01)
    benchmarks = {"a": (scratch_runs + runs("MiM", [0.6, 0.62]), scratch_curves + curves("MiM", 0.02)),
                  "b": (scratch_runs + runs("MiM", [0.52, 0.61]), scratch_curves + curves("MiM", 0.0)),
                  "old": (scratch_runs, None)}
    for label, (rows, curve_rows) in benchmarks.items():
        write_outputs(rows, str(tmp_path / label), f"benchmark {label}")
        if curve_rows:
            write_curves(curve_rows, str(tmp_path / label), f"benchmark {label}", "downstream")
    out = tmp_path / "out"
    assert main(["compare", *(f"{label}={tmp_path / label}" for label in benchmarks), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "- old: benchmark old (no learning curves kept)" in printed
    with open(out / "comparison_curves.csv") as f:
        combined = list(csv.DictReader(f))
    per_arm = {}
    for r in combined:
        per_arm.setdefault(r["arm"], []).append(r)
    assert sorted(per_arm) == ["MiM a", "MiM b", "scratch"]
    assert len(per_arm["scratch"]) == 2 * 20  # two folds of 20 epochs, once though two benchmarks hold them
    assert {r["benchmark"] for r in per_arm["MiM b"]} == {"b"}
    assert (out / "comparison_curves.png").is_file()
    # the end-of-training rows: EMA after the last epoch, and the raw curve's change at the end (2 of 20 epochs)
    rise = end_change([0.02 * epoch for epoch in range(20)])
    assert math.isclose(rise, 0.02 * 2)
    assert f"| 25% | MiM a | 2 | 20 | {0.02 * 19:.3f} | {rise:+.3f} (2) | {rise:+.3f}, {rise:+.3f} |" in printed
    assert "| 25% | MiM b | 2 | 20 | 0.000 | +0.000 (2) | +0.000, +0.000 |" in printed


def test_compare_keeps_two_label_draws_apart(tmp_path):
    """Benchmarks at other label draws (--seed: other labelled cases per fold) never make one arm,
    even when their folds do not overlap; a results folder from before rows named their draw is read
    by its title, and may be given first."""
    from nnunet_mim.benchmark import write_outputs
    from nnunet_mim.cli import main

    def runs(arm, folds, mean_dice, label_seed=None):
        named = {"label_seed": label_seed, "init_seed": 0, "pretraining": ""} if label_seed is not None else {}
        return [{"arm": arm, "fraction": 0.1, "fold": fold, **named, "trainer": "t", "class": "mean", "label": "",
                 "dice": dice} for fold, dice in zip(folds, mean_dice)]
    write_outputs(runs("scratch", [0, 1], [0.5, 0.6]) + runs("MAE", [0, 1], [0.55, 0.62]), str(tmp_path / "old"),
                  "D, budget 'cpu', folds [0, 1], seed 0")  # older: its rows name neither draw nor pre-training
    write_outputs(runs("scratch", [2, 3], [0.7, 0.4], 2) + runs("MAE", [2, 3], [0.6, 0.45], 2),
                  str(tmp_path / "new"), "D, budget 'cpu', folds [2, 3], seed 2")
    out = tmp_path / "out"
    args = ["compare", f"draw0={tmp_path / 'old'}", f"draw2={tmp_path / 'new'}", "-o", str(out)]
    assert main(args) == 1  # no single scratch arm to compare with
    assert main(args + ["--reference", "scratch draw2"]) == 0
    with open(out / "comparison.csv") as f:
        table = {e["arm"]: e for e in csv.DictReader(f)}
    assert sorted(table) == ["MAE draw0", "MAE draw2", "scratch draw0", "scratch draw2"]
    assert table["scratch draw0"]["folds"] == "2" and table["MAE draw2"]["folds"] == "2"
    assert math.isclose(float(table["MAE draw2"]["diff_vs_reference"]), (-0.1 + 0.05) / 2)
    with open(out / "comparison_runs.csv") as f:
        assert {(r["benchmark"], r["label_seed"]) for r in csv.DictReader(f)} == {("draw0", "0"), ("draw2", "2")}


def test_compare_averages_an_arms_runs_at_other_init_seeds(tmp_path, capsys):
    """Benchmarks of one setting at other --init-seeds combine into one arm per method, each fold the
    mean over its seeds; a results folder from before rows named their seed is read by its title."""
    from nnunet_mim.benchmark import write_outputs
    from nnunet_mim.cli import main

    def runs(arm, mean_dice, init_seed=None, pretraining=None):
        named = {k: v for k, v in (("init_seed", init_seed), ("pretraining", pretraining)) if v is not None}
        return [{"arm": arm, "fraction": 0.1, "fold": fold, **named, "trainer": "t", "class": "mean", "label": "",
                 "dice": dice} for fold, dice in enumerate(mean_dice)]
    write_outputs(runs("scratch", [0.5, 0.6, 0.7], 0, "") + runs("MAE", [0.55, 0.6, 0.72], 0, "MAE"),
                  str(tmp_path / "s0"), "D, budget 'cpu', folds [0, 1, 2], seed 2")
    write_outputs(runs("scratch", [0.54, 0.58, 0.66]) + runs("MAE", [0.5, 0.61, 0.74]), str(tmp_path / "s8"),
                  "D, budget 'cpu', folds [0, 1, 2], seed 2, init seed 8")  # an older benchmark: neither column
    write_outputs(runs("MAE", [0.4, 0.5, 0.6], 1, "MAE_weights_0123456789ab"), str(tmp_path / "given"),
                  "D, budget 'cpu', folds [0, 1, 2], seed 2, init seed 1")
    out = tmp_path / "out"
    assert main(["compare", f"seed0={tmp_path / 's0'}", f"seed8={tmp_path / 's8'}", f"given={tmp_path / 'given'}",
                 "-o", str(out)]) == 0
    with open(out / "comparison.csv") as f:
        table = {e["arm"]: e for e in csv.DictReader(f)}
    # MAE from other weights is never averaged with the benchmark's own MAE pre-training, at any seed
    assert sorted(table) == ["MAE given", "MAE seed0", "MAE seed8", "scratch"]
    assert table["scratch"]["init_seeds"] == "0 8" and table["MAE seed8"]["init_seeds"] == "8"
    assert "| 10% | scratch, init seed 8 | 0.540 | 0.580 | 0.660 |" in capsys.readouterr().out
    assert main(["compare", f"seed0={tmp_path / 's0'}", f"seed8={tmp_path / 's8'}", "-o", str(out)]) == 0
    with open(out / "comparison.csv") as f:
        table = {e["arm"]: e for e in csv.DictReader(f)}
    assert sorted(table) == ["MAE", "scratch"] and table["MAE"]["init_seeds"] == "0 8"
    assert math.isclose(float(table["MAE"]["diff_vs_reference"]),
                        ((0.55 + 0.5) - (0.5 + 0.54) + (0.6 + 0.61) - (0.6 + 0.58) + (0.72 + 0.74) - (0.7 + 0.66)) / 6)


def test_a_spec_names_every_bad_field_at_once():
    """Checked when made, before any folder is read: every field that cannot be run, each named."""
    from nnunet_mim.benchmark import BenchmarkError, BenchmarkSpec
    with pytest.raises(BenchmarkError) as refused:
        BenchmarkSpec("991", folds=[0, 0], fractions=[0.0], budget="huge", arms=["scratch", "mim"], seed=-1,
                      schedule="fast", init_seeds=[], device="tpu")
    told = str(refused.value).split("; ")
    assert [problem.split(":")[0] for problem in told] == ["arms", "budget", "schedule", "folds", "fractions",
                                                          "init_seeds", "seed", "device"]
    assert "unknown arms ['mim']" in told[0] and "'huge' is not one of" in told[1]
    with pytest.raises(BenchmarkError, match="arms: scratch-default is scratch at the default schedule"):
        BenchmarkSpec("991", arms=["scratch", "scratch-default"])
    spec = BenchmarkSpec("991", folds=[0, 1], arms=["MiM"])  # argparse's lists kept as tuples: the spec is frozen
    assert spec.folds == (0, 1) and spec.arms == ("MiM",)


def test_weights_of_another_network_run_as_the_given_arms_on_their_own_network(benchmark_env, tmp_path, monkeypatch):
    """--pretrained-weights given=FILE with an nnssl Primus file: the given arm fine-tunes it with the trainer of its
    network at the budget's length, given-scratch trains that network from random weights, the other arms are
    untouched; its runs are named by the file's bytes; a hybrid pre-training, a file without both given arms run, or
    a ResEnc file on a plan of another network are refused before any run."""
    from test_primus import hand_written_nnssl_primus

    from nnunet_mim.benchmark import BenchmarkError
    hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    given_file = str(tmp_path / "nnssl.pth")
    settings = dict(dataset="Dataset991_E2E", configuration="3d_fullres", folds=[0], fractions=[1.0], budget="smoke",
                    work_folder=str(tmp_path / "w"), device="cpu")
    bench = benchmark(**settings, arms=["scratch", "given", "given-scratch"], pretrained_weights={"given": given_file})
    assert bench.trainer("given") == bench.trainer("given-scratch") == "nnUNetTrainerPrimusFinetune_T_CPUsmoke"
    assert bench.pretrained_methods == [] and bench.trainer("scratch") == "nnUNetTrainerMiMScratch_T_CPUsmoke"
    calls = []
    monkeypatch.setattr(bench, "train", lambda env, trainer, fold, pretrained=None, dataset=None, plans=None:
                        calls.append((trainer, pretrained, env["nnUNet_results"])) or str(tmp_path / "run"))
    monkeypatch.setattr(bench, "scores", lambda folder, run: [])
    bench.run()
    bench.log.close()
    assert [c[:2] for c in calls] == [("nnUNetTrainerMiMScratch_T_CPUsmoke", None),
                                      ("nnUNetTrainerPrimusFinetune_T_CPUsmoke", given_file),
                                      ("nnUNetTrainerPrimusFinetune_T_CPUsmoke", None)]
    assert "given_weights_" in calls[1][2] and calls[2][2].endswith("given-scratch")
    notes = "\n".join(bench.table_notes())
    assert "nnssl checkpoint of PrimusX, Primus-T" in notes and "given-scratch: the same network" in notes

    mim = save_pretraining_checkpoint(tmp_path / "mim.pth", "MiM", alignment_weight=0.1)
    with pytest.raises(BenchmarkError, match="a hybrid pre-training goes to the arm of its method"):
        benchmark(**settings, arms=["given", "given-scratch"], pretrained_weights={"given": mim})
    with pytest.raises(BenchmarkError, match="add given-scratch to --arms"):
        benchmark(**settings, arms=["given"], pretrained_weights={"given": given_file})
    with pytest.raises(BenchmarkError, match=r"given-scratch need the weights: --pretrained-weights given=FILE"):
        benchmark(**settings, arms=["given-scratch"])
    import torch
    torch.save({"network_weights": {}, "nnssl_adaptation_plan": {"architecture_plans": {
        "arch_class_name": "ResEncL"}}}, tmp_path / "resenc.pth")
    with pytest.raises(BenchmarkError, match="nnUNetPlans builds .*PlainConvUNet: plan one"):
        benchmark(**settings, arms=["given", "given-scratch"],
                  pretrained_weights={"given": str(tmp_path / "resenc.pth")})


@pytest.mark.slow  # two nnU-Net runs of tiny Primus and their validation: about a minute on 2 cores
def test_the_given_arms_run_through_nnunet_with_an_nnssl_file(nnunet_env, tmp_path):
    """An nnssl Primus file as the given arm and its network from scratch, on the same fold, through the real
    commands: both rows in the table, the given run loaded from the file (its log says so), the scratch one not."""
    from test_primus import hand_written_nnssl_primus
    hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    work = tmp_path / "bench"
    result = run([sys.executable, "-m", "nnunet_mim.cli", "benchmark", "991", "--budget", "smoke", "--folds", "0",
                  "--fractions", "1.0", "--device", "cpu", "--work-folder", str(work), "--arms", "given",
                  "given-scratch", "--pretrained-weights", f"given={tmp_path / 'nnssl.pth'}"], nnunet_env)
    assert "| 100% | mean | given |" in result.stdout and "| 100% | mean | given-scratch |" in result.stdout
    with open(work / "benchmark.log") as f:
        log = f.read()
    assert log.count("pre-trained weights loaded from") == 1 and "nnUNetTrainerPrimusFinetune_T_CPUsmoke" in log
