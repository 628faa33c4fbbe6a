"""What a benchmark's table must be read with, said before its runs and written under the table: where given
weights come from, what the plan's patch leaves of each pre-training, and when scratch shares a schedule made
for pre-trained weights."""
from typing import List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.benchmark.arms import BUDGETS, GIVEN, GIVEN_SCRATCH, SCRATCH_DEFAULT
from nnunet_mim.benchmark.plan import plans_file
from nnunet_mim.benchmark.spec import BenchmarkInputs, BenchmarkSpec


def pretraining_warnings(spec: BenchmarkSpec, inputs: BenchmarkInputs, methods: Sequence[str]) -> List[str]:
    """Said before hours of runs, not only deep in a pre-training log: what the plan's patch leaves of each
    pre-trained method (MiM's hierarchy needs 64 voxels per axis)."""
    from nnunet_mim import variants
    from nnunet_mim.plans import adapt_plans
    plans = load_json(plans_file(inputs.pretrain_dataset_name, inputs.pretrain_plans))
    warnings = []
    for method in methods:
        trainer = getattr(variants, BUDGETS[spec.budget].pretrain[method])
        config = adapt_plans(plans, spec.configuration, trainer.encoder_preset, trainer.levels.patch_multiple)
        warning = trainer.levels.hierarchy_warning(config["configurations"][spec.configuration]["patch_size"])
        if warning:
            warnings.append(f"WARNING ({method} pre-training): {warning}")
    return warnings


def schedule_note(spec: BenchmarkSpec, methods: Sequence[str]) -> Optional[str]:
    """When scratch shares a non-default schedule with pre-trained arms (``methods``): the match is exact, but a
    schedule made for pre-trained weights can handicap random ones (decoder-first freezes scratch's random
    encoder for its first epochs), so the table compares every arm at the pre-trained arms' schedule, not each at
    its best. Nothing when the scratch-default arm is run: the table then holds scratch at both schedules."""
    if spec.schedule == "default" or "scratch" not in spec.arms or not methods or SCRATCH_DEFAULT in spec.arms:
        return None
    return (f"NOTE: --schedule {spec.schedule} fine-tunes scratch with that schedule too, and a schedule "
            "that suits pre-trained weights can cost random ones (docs/experiments/"
            "20-the-default-schedule-at-1200-steps.md). To compare with scratch at its own schedule too, add "
            f"the arm {SCRATCH_DEFAULT} (--arms ... scratch-default): it reuses the default-schedule scratch "
            "runs of the work folder.")


def table_notes(spec: BenchmarkSpec, inputs: BenchmarkInputs, methods: Sequence[str]) -> List[str]:
    """Every note, for the pre-trained methods the benchmark pre-trains itself (``methods``)."""
    given = [f"{arm}: fine-tuned from {weights.path} ({weights.description})"
             for arm, weights in inputs.given_weights.items()]
    if GIVEN in inputs.given_weights:
        given.append(f"{GIVEN_SCRATCH}: the same network and trainer ({inputs.given_weights[GIVEN].trainer}) from "
                     f"random weights; both given arms train at their network's own schedule, whatever --schedule "
                     "says, and their network is not the other arms'")
    return given + pretraining_warnings(spec, inputs, methods) + list(filter(None, [schedule_note(spec, methods)]))
