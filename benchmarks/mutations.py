"""The mutation catalogue: plausible ways of breaking the method, each a small patch, and the tests that must
notice. Each mutation is applied to a fresh copy of this repository and the tests it names run there; a test
that fails kills it. Prints the kill rate and names the survivors (the slow test tier runs it; the figures go
into docs/method.md).

    python benchmarks/mutations.py               # every mutation, about 15 minutes on 2 cores
    python benchmarks/mutations.py --only l1-strided alignment-dropped
    python benchmarks/mutations.py --list

A mutation names the bug, where it was seen (the authors' released code, a review of this project), the file,
the text it replaces (which must occur exactly once, so the catalogue fails loudly when the code moves on)
and its replacement.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    path: str
    old: str
    new: str
    tests: Tuple[str, ...]


MASKING = ("tests/test_masking.py", "tests/test_method.py")
LOSSES = ("tests/test_losses.py", "tests/test_method.py")
TRAINER = ("tests/test_method.py", "tests/test_pretraining_recipe.py")

CATALOGUE: List[Mutation] = [
    # ---- levels and masks ----
    Mutation("l1-strided", "L1 taken by striding instead of average pooling (review)", "nnunet_mim/masking.py",
             "l1 = F.avg_pool3d(crops, 2)", "l1 = crops[..., ::2, ::2, ::2]", MASKING),
    Mutation("l1-slabs", "L1 hidden in raster slabs, not octants (the authors' code)", "nnunet_mim/masking.py",
             "l1_hidden = all_octants[octants].any(dim=1)",
             "l1_hidden = torch.arange(all_octants[0].numel()).lt(all_octants[0].numel() // 2)"
             ".view(1, *grid).expand(batch, *grid)", MASKING),
    Mutation("l2-wrong-octant", "L2 cut from another octant than the hidden one", "nnunet_mim/masking.py",
             "octant_offset(int(o), patch)", "octant_offset(7 - int(o), patch)", MASKING),
    Mutation("l2-ratio", "L2 mask ratio 0.5 instead of 0.6", "nnunet_mim/masking.py",
             "l2_mask_ratio: float = 0.6", "l2_mask_ratio: float = 0.5", MASKING),
    Mutation("l3-visible-tokens", "L3 cut from visible L2 tokens", "nnunet_mim/masking.py",
             "+ l2_hidden_regions.flatten(1).float() * 2", "+ (~l2_hidden_regions).flatten(1).float() * 2", MASKING),
    Mutation("mae-ratio", "MAE's mask ratio 0.5 instead of 0.75 (review)", "nnunet_mim/pretraining/trainer.py",
             "levels = LevelConfig(num_levels=1, l1_mask_ratio=0.75)",
             "levels = LevelConfig(num_levels=1, l1_mask_ratio=0.5)", TRAINER),
    # ---- losses ----
    Mutation("loss-on-visible", "reconstruction loss on visible tokens", "nnunet_mim/losses.py",
             "return (per_token * hidden).sum()", "return (per_token * (1 - hidden)).sum()", LOSSES),
    Mutation("targets-not-normalised", "targets not normalised per token", "nnunet_mim/losses.py",
             "return (target - mean) / std", "return target", LOSSES),
    Mutation("l1-l2-own-features", "the L1-L2 term compares L2 with itself (the authors' code)",
             "nnunet_mim/pretraining/objective.py", "parent_features(level_features[i - 1], levels[i])",
             "parent_features(level_features[i], levels[i])", LOSSES),
    Mutation("parent-all-tokens", "the parent pooled over all its tokens, not the child's region",
             "nnunet_mim/pretraining/objective.py", "weights = child.parent_tokens.flatten(1).to(features.dtype)",
             "weights = torch.ones_like(child.parent_tokens.flatten(1), dtype=features.dtype)", LOSSES),
    Mutation("no-stop-gradient", "no stop-gradient on the parent's features", "nnunet_mim/pretraining/model.py",
             "target = self.parent[pair](parent_features.detach())", "target = self.parent[pair](parent_features)",
             LOSSES),
    Mutation("predictor-removed", "the predictor left out of the child side", "nnunet_mim/pretraining/model.py",
             "return self.predictor[pair](child), target.detach()", "return child, target.detach()", LOSSES),
    Mutation("alignment-dropped", "alignment logged but not trained (review)", "nnunet_mim/pretraining/objective.py",
             "total = total + alignment_weight * terms", "total = total + 0 * terms", TRAINER),
    Mutation("alignment-1e-3", "alignment weight 1e-3, the authors' argparse default (review)",
             "nnunet_mim/pretraining/trainer.py", "alignment_weight = 0.1", "alignment_weight = 1e-3", TRAINER),
    Mutation("reconstruction-1-0-0", "reconstruction weights (1, 0, 0) (review)", "nnunet_mim/pretraining/trainer.py",
             "reconstruction_weights = (1.0, 1.0, 1.0)", "reconstruction_weights = (1.0, 0.0, 0.0)", TRAINER),
    Mutation("monitor-on-targets", "the encoder's collapse monitor read on the heads' batch-normalised targets "
             "(review)", "nnunet_mim/pretraining/objective.py", "features.append(spread(pooled))",
             "features.append(spread(target))", LOSSES),
    # ---- network ----
    Mutation("mask-gate-removed", "the conv blocks' depthwise branch not gated by the mask",
             "nnunet_mim/architecture/blocks.py", "            y = y * visible", "            y = y",
             ("tests/test_network.py", "tests/test_losses.py")),
    Mutation("fusion-after-norm", "fusion added after the final norm (review)", "nnunet_mim/architecture/encoder.py",
             "self.norm(tokens + fused)", "self.norm(tokens) + fused",
             ("tests/test_network.py", "tests/test_method.py")),
    Mutation("decoder-default-init", "the token decoder at PyTorch's default initialisation (review)",
             "nnunet_mim/pretraining/model.py",
             "        # built after the segmentation network ran its init: MAE / ConvMAE's init, here\n"
             "        self.apply(init_linear_weights)", "", ("tests/test_method.py",)),
    Mutation("heads-default-init", "the alignment heads at PyTorch's default initialisation (review)",
             "nnunet_mim/pretraining/model.py",
             "        self.predictor = heads(projector_features) if predictor else None\n"
             "        self.apply(init_linear_weights)",
             "        self.predictor = heads(projector_features) if predictor else None", ("tests/test_method.py",)),
    Mutation("resenc-input-not-masked", "the CNN backbone sees the hidden regions (input not zeroed)",
             "nnunet_mim/backbones/resenc.py", "skips = self.encoder(x * visible)", "skips = self.encoder(x)",
             ("tests/test_backbones.py",)),
    Mutation("resenc-features-unpooled", "the CNN's alignment features taken from the deepest stage, not the token's",
             "nnunet_mim/backbones/resenc.py", "if all(t <= TOKEN_SIZE for t in total):", "if True:",
             ("tests/test_backbones.py",)),
    Mutation("primus-attends-padding", "Primus's visible tokens attend to the padding, hidden tokens of samples that "
             "show fewer", "nnunet_mim/backbones/primus.py", "attn_mask = padding_attention_mask(valid, tokens.dtype)",
             "attn_mask = None", ("tests/test_primus.py",)),
    Mutation("primus-single-token-regions", "MiM's L2 and L3 regions on Primus single 8^3 tokens, not the paper's "
             "16^3 voxels", "nnunet_mim/backbones/primus.py", "l3_region_tokens=2 if levels.num_levels > 1 else 1",
             "l3_region_tokens=1", ("tests/test_primus.py",)),
    Mutation("position-table-corners-aligned", "the position table resized with aligned corners, not master's rule",
             "nnunet_mim/pretrained_loading.py", 'mode="trilinear", align_corners=False)',
             'mode="trilinear", align_corners=True)', ("tests/test_primus.py",)),
    Mutation("primus-decoder-loaded", "Primus's decoder, which no pre-training trains for segmentation, loaded from "
             "the file", "nnunet_mim/pretrained_loading.py",
             'return (".seg_layers.", ".up_projection.") if isinstance(module, Primus) else (".seg_layers.",)',
             'return (".seg_layers.",)', ("tests/test_primus.py",)),
    # ---- optimisation ----
    Mutation("zero-grad-every-micro-step", "gradients zeroed on every micro-step (review)",
             "nnunet_mim/pretraining/trainer.py", "            scaled = loss / accumulation",
             "            self.optimizer.zero_grad(set_to_none=True)\n            scaled = loss / accumulation",
             TRAINER),
    Mutation("gradients-summed", "gradients summed, not averaged, over the accumulation (review)",
             "nnunet_mim/pretraining/trainer.py", "            scaled = loss / accumulation",
             "            scaled = loss", TRAINER),
    Mutation("target-every-micro-step", "the moving-average target updated on every micro-step (review)",
             "nnunet_mim/pretraining/trainer.py", "        self.micro_step += 1\n",
             "        self.micro_step += 1\n        if self.pretrain_network.alignment is not None:\n"
             "            self.pretrain_network.alignment.update_target(0.99)\n", TRAINER),
    Mutation("target-after-discarded-step", "the moving-average target updated after a discarded step (review)",
             "nnunet_mim/pretraining/stepping.py", "        elif self.pretrain_network.alignment is not None:",
             "        if self.pretrain_network.alignment is not None:", TRAINER),
    Mutation("target-never-updated", "the moving-average target never updated", "nnunet_mim/pretraining/stepping.py",
             "            self.pretrain_network.alignment.update_target(self.target_momentum(self.optimizer_step))",
             "            pass", TRAINER),
    Mutation("non-finite-kept", "a non-finite micro-step's accumulation applied", "nnunet_mim/pretraining/stepping.py",
             "finite = self._finite_on_all_ranks(self.accumulated_loss)", "finite = True", TRAINER),
    Mutation("lr-not-scaled", "the lr not scaled by the effective batch", "nnunet_mim/pretraining/recipe.py",
             "return self.base_lr * self.effective_batch / 256", "return self.base_lr", TRAINER),
    Mutation("warmup-in-epochs", "the warm-up counted in epochs while the schedule counts optimizer steps",
             "nnunet_mim/pretraining/trainer.py", "self.run_warmup_epochs * per_epoch", "self.run_warmup_epochs",
             TRAINER),
    # ---- transfer ----
    Mutation("weights-not-loaded", "fine-tuning loads no pre-trained weights (the authors' script)",
             "nnunet_mim/pretrained_loading.py", "module.load_state_dict({**own, **{k: saved[k] for k in kept}})",
             "module.load_state_dict(own)", ("tests/test_end_to_end.py::test_finetune_loads_and_predicts",)),
]


def copy_repository(target: str) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        destination = os.path.join(target, name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), destination)
    # the installed layout: nnunet_mim.trainers and nnunet_mim.cpu_budget_trainers are folders of the root
    for package in ("trainers", "cpu_budget_trainers"):
        os.symlink(os.path.join(target, package), os.path.join(target, "nnunet_mim", package))


def apply(mutation: Mutation, root: str) -> None:
    path = os.path.join(root, mutation.path)
    with open(path) as f:
        text = f.read()
    if text.count(mutation.old) != 1:
        raise ValueError(f"{mutation.name}: the text to replace occurs {text.count(mutation.old)} times in "
                         f"{mutation.path} (the code moved on: update the catalogue)")
    with open(path, "w") as f:
        f.write(text.replace(mutation.old, mutation.new))


def run_tests(root: str, tests: Tuple[str, ...], timeout: float) -> Tuple[bool, str]:
    """(passed, the last line pytest printed)."""
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("nnUNet_extTrainer", None)
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                             cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
    return out.returncode == 0, lines[-1] if lines else out.stderr.strip()[-200:]


def run(mutations: List[Mutation], timeout: float) -> List[Tuple[Mutation, bool, str, float]]:
    results = []
    for mutation in mutations:
        with tempfile.TemporaryDirectory(prefix="mutation_") as root:
            copy_repository(root)
            apply(mutation, root)
            start = time.time()
            survived, last = run_tests(root, mutation.tests, timeout)
            results.append((mutation, not survived, last, time.time() - start))
        print(f"| {mutation.name} | {mutation.bug} | {'killed' if not survived else 'SURVIVED'} | {last} | "
              f"{results[-1][3]:.0f} |", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the catalogue and stop")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation's tests")
    parser.add_argument("--baseline", action="store_true", help="first run every named test unmutated (all must pass)")
    args = parser.parse_args()
    known = {m.name: m for m in CATALOGUE}
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    mutations = [known[name] for name in args.only] if args.only else CATALOGUE
    if args.list:
        for m in mutations:
            print(f"{m.name:30} {m.path:40} {m.bug}")
        return 0
    if args.baseline:
        with tempfile.TemporaryDirectory(prefix="mutation_baseline_") as root:
            copy_repository(root)
            passed, last = run_tests(root, tuple(sorted({t for m in mutations for t in m.tests})), args.timeout * 3)
        print(f"baseline (no mutation): {'passed' if passed else 'FAILED'}: {last}")
        if not passed:
            return 1
    print("| mutation | bug | outcome | last line of the tests | seconds |\n|---|---|---|---|---|")
    results = run(mutations, args.timeout)
    killed = [r for r in results if r[1]]
    print(f"\nkilled {len(killed)} of {len(results)} ({len(killed) / len(results):.0%}); survivors: "
          f"{', '.join(r[0].name for r in results if not r[1]) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
