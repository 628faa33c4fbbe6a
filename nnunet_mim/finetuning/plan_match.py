"""Does the plan fine-tuned with match the pre-training's? Spacing and intensity normalisation, read from an nnssl
checkpoint's adaptation plan or from this project's pre-training record, against the plan of the run: a mismatch is
said loudly at the start of fine-tuning, with the commands that plan like the checkpoint (nnU-Net 2.8.1 has no
``nnUNetv2_preprocess_like_nnssl``; its planner takes the spacing, the plans file the normalisation).

The hybrid's fine-tuning trainer says the normalisation part itself (finetuning/checkpoint.py); this is the check of
the trainers that fine-tune nnU-Net's own networks and Primus (``nnUNetTrainerStockCNN``,
``nnUNetTrainerPrimusFinetune``), whose files may come from nnssl.
"""
from typing import List, Optional, Sequence

from nnunet_mim.finetuning.load_report import pretrained_weights_from_argv
from nnunet_mim.pretrained_loading import read_once

SPACING_TOLERANCE = 0.1  # relative difference on any axis that counts as another spacing


def pretraining_preprocessing(checkpoint: dict) -> Optional[dict]:
    """``{"spacing": [...] or None, "normalization_schemes": [...]}`` the file was pre-trained with, or None when it
    does not say (a segmentation checkpoint, a file of another tool)."""
    plan = checkpoint.get("nnssl_adaptation_plan")
    if isinstance(plan, dict):
        configurations = (plan.get("pretrain_plan") or {}).get("configurations") or {}
        configuration = next(iter(configurations.values()), None)
        if isinstance(configuration, dict):
            return {"spacing": configuration.get("spacing"),
                    "normalization_schemes": configuration.get("normalization_schemes") or []}
    extras = checkpoint.get("nnunet_mim")
    if isinstance(extras, dict) and "spacing" in extras:
        return {"spacing": extras["spacing"], "normalization_schemes": extras.get("normalization_schemes") or []}
    return None


def differs(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) != len(b) or any(abs(x - y) > SPACING_TOLERANCE * max(abs(x), abs(y)) for x, y in zip(a, b))


def plan_mismatch(checkpoint: dict, spacing: Sequence[float], schemes: Sequence[str], configuration: str,
                  plans: dict) -> List[str]:
    """One warning per way the run's plan differs from the pre-training's (none when the file does not say)."""
    dataset = plans["dataset_name"].removeprefix("Dataset").split("_")[0]  # nnU-Net's names: DatasetNNN_Name
    pretraining = pretraining_preprocessing(checkpoint)
    if pretraining is None:
        return []
    warnings = []
    before = pretraining["spacing"]
    if isinstance(before, list) and len(before) == 3 and differs(before, spacing):
        name = f"{plans['plans_name']}_like_pretraining"
        planner = plans.get("experiment_planner_used") or "ExperimentPlanner"
        warnings.append(
            f"the pre-trained weights were learnt at spacing {before} mm and this plan resamples to "
            f"{[round(float(s), 4) for s in spacing]} mm: the features meet structures at another scale. To plan like "
            f"the checkpoint: nnUNetv2_plan_experiment -d {dataset} -pl {planner} -overwrite_target_spacing "
            f"{' '.join(str(s) for s in before)} -overwrite_plans_name {name} && nnUNetv2_preprocess -d {dataset} "
            f"-plans_name {name} -c {configuration}, then train with -p {name}")
    given = [str(s) for s in pretraining["normalization_schemes"]]
    if given and given[:1] != list(schemes[:1]):
        warnings.append(
            f"the pre-trained weights saw intensities normalised by {given[0]} and this plan uses {schemes[0]}: set "
            f"\"normalization_schemes\" to [\"{given[0]}\", ...] in {plans['plans_name']}.json of nnUNet_preprocessed "
            f"and run nnUNetv2_preprocess again (nnssl's models are z-scored per image: ZScoreNormalization)")
    return warnings


class PlanMatchCheck:
    """Mixed into a fine-tuning trainer: once initialised, and before nnUNetv2_train loads ``-pretrained_weights``,
    each way its plan differs from the file's pre-training goes to the log as a WARNING."""

    def initialize(self):
        super().initialize()
        path = pretrained_weights_from_argv()
        if not path:
            return
        cm = self.configuration_manager
        for warning in plan_mismatch(read_once(path), cm.spacing, cm.normalization_schemes, self.configuration_name,
                                     self.plans_manager.plans):
            self.print_to_log_file(f"WARNING: {warning}")
