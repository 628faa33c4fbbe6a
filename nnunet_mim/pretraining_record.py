"""What a pre-training run leaves inside the network weights themselves.

nnU-Net's stock ``-pretrained_weights`` loader copies ``network_weights`` and nothing else, so
the facts fine-tuning must check travel as a persistent buffer of the network
(``pretraining_record``): all zeros means "never pre-trained". Because the buffer is loaded like
any weight, the fine-tuning trainer can tell afterwards whether, and from what, weights were
loaded, without access to the checkpoint file.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from nnunet_mim.methods import RECORD_CODES, record_code

RECORD_LENGTH = 16
FORMAT_VERSION = 1.0
METHODS = {code: name for name, code in RECORD_CODES.items()}  # code -> method (nnunet_mim/methods.py)
# ResEnc: the plan's residual-encoder U-Net; Primus: dynamic-network-architectures' transformer (backbones/)
PRESET_CODES = {"T": 1.0, "S": 2.0, "B": 3.0, "ResEnc": 4.0, "Primus": 5.0}


@dataclass(frozen=True)
class PretrainingRecord:
    method: str
    preset: str
    decoder_pretrained: bool
    input_channels: int
    patch_size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    epochs: int

    def to_tensor(self) -> torch.Tensor:
        method = record_code(self.method)
        values = [FORMAT_VERSION, method, PRESET_CODES[self.preset], float(self.decoder_pretrained),
                  float(self.input_channels), *map(float, self.patch_size), *map(float, self.spacing),
                  float(self.epochs)]
        out = torch.zeros(RECORD_LENGTH, dtype=torch.float64)
        out[:len(values)] = torch.tensor(values, dtype=torch.float64)
        return out

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> Optional["PretrainingRecord"]:
        v = tensor.detach().cpu().double().tolist()
        if v[0] == 0.0:
            return None
        if v[0] > FORMAT_VERSION or (v[0] == FORMAT_VERSION and v[1] > max(METHODS)):
            raise ValueError(f"its pretraining record (format {v[0]:g}, method code {v[1]:g}) was written by a newer "
                             f"nnunet-mim than this one (format {FORMAT_VERSION:g}, method codes up to "
                             f"{max(METHODS):g}): upgrade nnunet-mim to read it")
        if v[0] != FORMAT_VERSION or v[1] not in METHODS:
            raise ValueError(f"its pretraining record {v[:4]} is not one nnunet-mim writes (a tensor of that name "
                             "from another tool?)")
        preset = {c: n for n, c in PRESET_CODES.items()}.get(v[2], "custom")
        return cls(method=METHODS[v[1]], preset=preset, decoder_pretrained=bool(v[3]),
                   input_channels=int(v[4]), patch_size=tuple(int(i) for i in v[5:8]),
                   spacing=tuple(v[8:11]), epochs=int(v[11]))

    def describe(self) -> str:
        return (f"{self.method} pre-training, preset {self.preset}, {self.epochs} epochs, patch "
                f"{'x'.join(map(str, self.patch_size))}, spacing {tuple(round(s, 3) for s in self.spacing)}, "
                f"{self.input_channels} input channel(s), decoder "
                f"{'pre-trained' if self.decoder_pretrained else 'not pre-trained'}")
