"""The pre-training methods, in one place: each names its pre-training trainer, the method its checkpoints
record, and the benchmark arm it becomes. A new objective is its trainer module plus one line here; the
benchmark's arms, the checkpoint records and the variants read this registry.

Each method's loss terms are its trainer's (``loss_terms``: one reconstruction term per level, one alignment
term per level pair, and the collapse monitors where it aligns).
"""
from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Method:
    name: str     # the benchmark arm and the name in every table
    trainer: str  # the pre-training trainer (a class name; variants add a suffix such as "_100ep")
    record: str   # what its checkpoints' pretraining record says (RECORD_CODES)
    module: str = "nnunet_mim.pretraining.trainer"  # where the trainer class is defined


# codes stored in checkpoints' pretraining records: persistent, never renumbered. "supervised": an encoder
# trained with labels put into a pre-training checkpoint (adapt-checkpoint --encoder-from)
RECORD_CODES: Dict[str, float] = {"MiM": 1.0, "MAE": 2.0, "supervised": 3.0}

METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("MAE", "nnUNetTrainerMAEPretrain", "MAE"),
    Method("MiM", "nnUNetTrainerMiMPretrain", "MiM"),
    Method("MiM-noalign", "nnUNetTrainerMiMPretrainNoAlign", "MiM"),
)}


def trainer_class(m: Method) -> type:
    import importlib
    return getattr(importlib.import_module(m.module), m.trainer)


def method(name: str) -> Method:
    """The method called ``name``; a ValueError that lists the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown pre-training method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def record_code(record: str) -> float:
    """The code a checkpoint stores for ``record``; a ValueError that says where to add one otherwise."""
    if record not in RECORD_CODES:
        raise ValueError(f"no checkpoint record code for method {record!r} (known: {', '.join(RECORD_CODES)}): add "
                         "one to RECORD_CODES in nnunet_mim/methods.py")
    return RECORD_CODES[record]
