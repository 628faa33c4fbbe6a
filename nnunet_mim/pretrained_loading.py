"""``-pretrained_weights``, read once and without running code, by every route.

nnU-Net's ``nnUNetv2_train -pretrained_weights FILE`` loads FILE with ``torch.load(weights_only=False)``, which
runs any code the file names. Importing this project's trainers (which nnUNetv2_train does before it loads
anything) puts ``load_pretrained_weights`` in the place of the loader nnU-Net's run_training calls: nnU-Net's
rules (every tensor but the segmentation heads, by name, of the same shape, or nothing), the file read
safely (checkpointing.read_checkpoint) and once per process. A trainer that inspects the file first (the
fine-tuning trainer's load report) reads it through ``read_once``, and the load takes that same checkpoint:
a file replaced between the check and the load is never read a second time. Weights that are not finite
floating-point numbers are refused by name before anything is loaded.

Beyond nnU-Net's rules, for the files of other tools (nnssl's) and for pre-training continued from a segmentation
or nnssl network: a pre-training network's own heads (alignment, record) start fresh when the file has none, a
file of fewer input channels than the dataset is widened by nnU-Net master's rule, a transformer's position table
is resized to the network's token grid by master's rule (trilinear), and Primus's decoder (``up_projection``, which
no pre-training trains for segmentation) is the network's own, as its segmentation heads are; the load line says
what was loaded, kept, widened and resized.
"""
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet_mim.checkpointing import read_checkpoint, shown

# a pre-training network's own, beside the segmentation network's tensors: the alignment heads, the record, and a
# token decoder (the hybrid's and Primus's reconstruction path)
PRETRAINING_HEADS = ("alignment.", "pretraining_record", "reconstruction.")
_checked: Dict[str, dict] = {}  # absolute path -> the checkpoint read from it, until a load takes it


def read_once(path: str) -> dict:
    """The checkpoint at ``path`` as this process first read it (safely)."""
    key = os.path.abspath(path)
    if key not in _checked:
        _checked[key] = read_checkpoint(key)
    return _checked[key]


def unusable_weights(weights: Dict[str, torch.Tensor], network_state: Optional[Dict[str, torch.Tensor]] = None) -> str:
    """What makes a state dict unfit to train from, naming tensors; '' when it is fit: non-finite values, and
    tensors that are not floating point where the network's are (every tensor, without ``network_state``)."""
    problems = []
    for name, tensor in weights.items():
        should_float = network_state is None or network_state[name].is_floating_point()
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{name} is a {type(tensor).__name__}, not a tensor")
        elif should_float and not tensor.is_floating_point():
            problems.append(f"{name} is stored as {str(tensor.dtype).removeprefix('torch.')}")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} holds {int((~torch.isfinite(tensor)).sum())} NaN or infinite values")
    if not problems:
        return ""
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def kernel_for_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An input projection's kernel for ``channels`` input channels: each the mean of the given kernels times (given
    channels / ``channels``), so an image whose channels are all equal gets the response the kernel gave one."""
    mean = weight.mean(dim=1, keepdim=True) * (weight.shape[1] / channels)
    return mean.repeat(1, channels, *[1] * (weight.ndim - 2)).contiguous()


def widened_input_projections(path: str, saved: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor],
                               in_projections) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``saved`` with its input projections (the network's ``keys_to_in_proj``, under every alias) widened to the
    network's input channels, and the keys widened: each new channel's kernel is the mean of the file's times
    (file channels / network channels), for one channel nnU-Net master's rule (repeat, divide by C). A file with
    more input channels than the network is refused."""
    names = tuple(f"{key}.weight" for key in in_projections)
    widened, saved = [], dict(saved)
    for key in (k for k in own if k.endswith(names) and isinstance(saved.get(k), torch.Tensor)
                and saved[k].shape != own[k].shape):
        source, target = saved[key].shape[1], own[key].shape[1]
        if saved[key].shape[:1] + saved[key].shape[2:] != own[key].shape[:1] + own[key].shape[2:]:
            continue  # another network: the fit check names it
        if source > target:
            raise RuntimeError(f"{path} was pre-trained with {source} input channels and this dataset has {target}: "
                               "no rule drops channels. Nothing was loaded.")
        saved[key] = kernel_for_channels(saved[key], target)
        widened.append(key)
    return saved, widened


# what this project builds of nnssl's architectures, and with which trainer
NNSSL_ROUTES = (" This project fine-tunes nnssl's ResidualEncoderUNet and ResEncL with -tr nnUNetTrainerStockCNN on a "
                "plan of that network (-p nnUNetResEncUNetLPlans for ResEncL), and PrimusM with -tr "
                "nnUNetTrainerPrimusFinetune (PrimusS, B, L: nnUNetTrainerPrimusFinetune_S, _B, _L); the hybrid "
                "network reads no nnssl file.")
# name parts of the tensors a network keeps its own whatever the file holds, and what they are
OWN_PARTS = {".seg_layers.": "segmentation heads", ".up_projection.": "Primus's decoder"}


def own_heads(module: torch.nn.Module) -> Tuple[str, ...]:
    """``OWN_PARTS`` this network has: nnU-Net's segmentation heads, and a Primus's decoder (nnU-Net master, too,
    loads only Primus's encoder and stem)."""
    from dynamic_network_architectures.architectures.primus import Primus
    return (".seg_layers.", ".up_projection.") if isinstance(module, Primus) else (".seg_layers.",)


def is_head(key: str, heads: Sequence[str]) -> bool:
    return any(part in f".{key}" for part in heads)


def token_grid_of(checkpoint: dict, tokens: int, token_size: int) -> Optional[List[int]]:
    """The token grid the file's position table was learnt on: its pre-training patch (nnssl's plan, or this project's
    record) over the token size when that gives ``tokens`` tokens, else the cube that does, else None."""
    plan = checkpoint.get("nnssl_adaptation_plan") if isinstance(checkpoint.get("nnssl_adaptation_plan"), dict) else {}
    configurations = (plan.get("pretrain_plan") or {}).get("configurations") or {}
    patches = [plan.get("pretrain_patch_size"), *[c.get("patch_size") for c in configurations.values()
                                                  if isinstance(c, dict)],
               (checkpoint.get("nnunet_mim") or {}).get("patch_size")]
    for patch in patches:
        if isinstance(patch, (list, tuple)) and len(patch) == 3 and all(isinstance(p, int) for p in patch):
            grid = [p // token_size for p in patch]
            if math.prod(grid) == tokens:
                return grid
    side = round(tokens ** (1 / 3))
    return [side] * 3 if side ** 3 == tokens else None


def resize_position_table(table: torch.Tensor, source_grid: Sequence[int], target_grid: Sequence[int]) -> torch.Tensor:
    """A (1, N, D) position table learnt on ``source_grid`` (raster order) for ``target_grid``: trilinear, corners not
    aligned, as nnU-Net master resizes it (load_weights_utils.interpolate_patch_embed_3d)."""
    volume = table.transpose(1, 2).reshape(1, table.shape[2], *source_grid).float()
    resized = F.interpolate(volume, size=list(target_grid), mode="trilinear", align_corners=False)
    return resized.flatten(2).transpose(1, 2).to(table.dtype).contiguous()


def resized_position_table(path: str, checkpoint: dict, saved: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor],
                           module: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], str]:
    """``saved`` with the network's position table (its ``key_to_lpe``) resized to the network's token grid when the
    file's was learnt at another patch, and a line saying so ('' when nothing was resized)."""
    key = getattr(module, "key_to_lpe", None)
    table = saved.get(key) if key else None
    if not isinstance(table, torch.Tensor) or key not in own or table.shape == own[key].shape:
        return saved, ""
    if table.ndim != 3 or table.shape[::2] != own[key].shape[::2]:
        return saved, ""  # another network: the fit check names it
    target_grid = list(module.eva.rope.feat_shape)
    token_size = module.down_projection.proj.kernel_size[0]
    source_grid = token_grid_of(checkpoint, table.shape[1], token_size)
    if source_grid is None:
        raise RuntimeError(f"{path}: its position table ({key}) holds {table.shape[1]} tokens, and neither the file's "
                           "pre-training patch nor a cube gives that many; it cannot be resized to this network's "
                           f"{target_grid} tokens. Nothing was loaded.")
    return ({**saved, key: resize_position_table(table, source_grid, target_grid)},
            f"position table {key} resized from {source_grid} to {target_grid} tokens")


def load_pretrained_weights(network: torch.nn.Module, path: str, verbose: bool = False) -> None:
    """nnU-Net's -pretrained_weights rules, read safely and once, onto the network's device, under DDP and
    torch.compile too (nnU-Net's own loader maps the file to cuda:<global rank>: no such device past the
    first node, and none on the CPU)."""
    from nnunet_mim.architecture.network import unwrap_network
    checkpoint = read_once(path)
    _checked.pop(os.path.abspath(path), None)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise RuntimeError(f"{path} is not an nnU-Net checkpoint (no dict of 'network_weights'). Nothing was loaded.")
    saved = checkpoint["network_weights"]
    module = unwrap_network(network)
    own = module.state_dict()
    heads = own_heads(module)
    kept = {k: v for k, v in own.items() if not is_head(k, heads)}
    saved, widened = widened_input_projections(path, saved, own, getattr(module, "keys_to_in_proj", ()))
    saved, resized = resized_position_table(path, checkpoint, saved, own, module)

    def fits(key: str) -> bool:
        return isinstance(saved.get(key), torch.Tensor) and saved[key].shape == own[key].shape
    # a pre-training network's own heads start from scratch when the file has none (an nnssl checkpoint, or a
    # segmentation network's, continued by MiM pre-training)
    fresh = [k for k in kept if k.startswith(PRETRAINING_HEADS) and not fits(k)]
    kept = {k: v for k, v in kept.items() if k not in fresh}
    wrong = [k for k in kept if not fits(k)]
    if wrong:
        plan = checkpoint.get("nnssl_adaptation_plan")
        origin = (f" (an nnssl checkpoint of {shown((plan.get('architecture_plans') or {}).get('arch_class_name'))}, "
                  f"this run builds {type(module).__name__})" if isinstance(plan, dict) else "")
        raise RuntimeError(f"{path} does not fit this network{origin}: {len(wrong)} tensors missing or of another "
                           f"shape (first: {wrong[0]}). Nothing was loaded.{NNSSL_ROUTES if origin else ''}")
    problem = unusable_weights({k: saved[k] for k in kept}, kept)
    if problem:
        raise RuntimeError(f"{path} holds weights no training can start from: {problem}. Nothing was loaded.")
    module.load_state_dict({**own, **{k: saved[k] for k in kept}})
    said = f"; {len(fresh)} tensors of the pre-training heads start fresh: the file has none" if fresh else ""
    said += f"; input projections widened to {own[widened[0]].shape[1]} channels: {widened}" if widened else ""
    said += f"; {resized}" if resized else ""
    unused = [k for k in saved if k not in own]
    said += f"; {len(unused)} tensors of the file not in this network, skipped (e.g. {unused[0]})" if unused else ""
    own_parts = " and ".join(OWN_PARTS[part] for part in heads)
    print(f"pre-trained weights loaded from {path} ({len(kept)} tensors, read without running code; "
          f"{own_parts} kept as initialised ({len(own) - len(kept) - len(fresh)} tensors){said})")


def install() -> None:
    """Make nnUNetv2_train's -pretrained_weights go through ``load_pretrained_weights``."""
    from nnunetv2.run import run_training
    run_training.load_pretrained_weights = load_pretrained_weights
