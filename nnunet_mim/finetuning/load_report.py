"""What nnU-Net's ``-pretrained_weights`` actually loaded, said out loud.

The stock loader copies every checkpoint tensor whose key the network has (all but the
segmentation heads) and says little. After it ran, this module compares the network with its
own random initialisation and reads the ``pretraining_record`` buffer that came with the
weights, and reports per part of the network: loaded, new, skipped and why.
"""
import argparse
import sys
from collections import Counter
from typing import Dict, List, Optional

import torch

from nnunet_mim.pretraining_record import PretrainingRecord

SEGMENTATION_HEADS = ".seg_layers."  # never transferred by nnU-Net


def pretrained_weights_from_argv(argv: List[str] = None) -> Optional[str]:
    """The ``-pretrained_weights`` file of the running ``nnUNetv2_train`` command, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-pretrained_weights", default=None)
    # declared as nnUNetv2_train declares it: otherwise argparse reads "-p PLANS" as an abbreviation
    # of -pretrained_weights (allow_abbrev=False does not stop that for single-dash options)
    parser.add_argument("-p", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.pretrained_weights


class WeightsSnapshot(dict):
    """A CPU copy of a state dict whose repr stays one line (nnU-Net's debug.json prints every
    trainer attribute)."""

    def __repr__(self) -> str:
        return f"<weights snapshot: {len(self)} tensors>"


def snapshot(state_dict: Dict[str, torch.Tensor]) -> WeightsSnapshot:
    return WeightsSnapshot({k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()})


def _part(key: str) -> str:
    if SEGMENTATION_HEADS in key:
        return "decoder.seg_layers (segmentation heads)"
    if key.startswith("encoder.stem."):
        return "encoder.stem (full-resolution stem)"
    return key.split(".")[0]


class LoadReport:
    def __init__(self, initial: Dict[str, torch.Tensor], current: Dict[str, torch.Tensor],
                 record: Optional[PretrainingRecord], checkpoint_keys: Optional[List[str]] = None):
        # decoder.encoder.* repeats encoder.* (nnU-Net's decoders keep a reference to their encoder)
        keys = [k for k in current if not k.startswith("decoder.encoder.") and k != "pretraining_record"]
        self.record = record
        self.loaded = [k for k in keys if not torch.equal(initial[k], current[k].detach().cpu())]
        self.unchanged = [k for k in keys if k not in self.loaded]
        self.encoder_keys = [k for k in keys if k.startswith("encoder.") and not k.startswith("encoder.stem.")]
        self.unused_checkpoint_keys = sorted(set(checkpoint_keys) - set(current)) if checkpoint_keys else None

    @property
    def encoder_fraction(self) -> float:
        loaded = set(self.loaded)
        return sum(k in loaded for k in self.encoder_keys) / max(1, len(self.encoder_keys))

    def text(self) -> str:
        lines = ["Pre-trained weights load report"]
        if self.record is None:
            lines.append("  no pre-training record in the network: no MiM/MAE weights were loaded")
        else:
            lines.append(f"  source: {self.record.describe()}")
        loaded, unchanged = Counter(map(_part, self.loaded)), Counter(map(_part, self.unchanged))
        for part in sorted(set(loaded) | set(unchanged)):
            note = ""
            if part.startswith("decoder") and "seg_layers" not in part and self.record is not None \
                    and not self.record.decoder_pretrained:
                note = "  (copied, but not trained during pre-training)"
            if part.startswith("encoder.stem") and self.record is not None:  # a supervised encoder used its stem
                note = "" if self.record.method == "supervised" else \
                    "  (copied, but unused by the token-level pre-training)"
            lines.append(f"  {part:45s} loaded {loaded[part]:4d}  new/unchanged {unchanged[part]:4d}{note}")
        lines.append(f"  encoder tensors loaded: {self.encoder_fraction:.1%}")
        lines.append("  segmentation heads: new (nnU-Net never transfers .seg_layers.)")
        if self.unused_checkpoint_keys is not None:
            unused = Counter(k.split(".")[0] for k in self.unused_checkpoint_keys)
            lines.append("  in the checkpoint but not in this network (skipped: pre-training heads): "
                         + (", ".join(f"{p}.* ({n})" for p, n in sorted(unused.items())) or "none"))
        return "\n".join(lines)
