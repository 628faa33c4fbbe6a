"""The method as the trainers run it, each test written against a plausible way of breaking it (the mutation
catalogue, benchmarks/mutations.py, names the bug each one kills): L1 is the average-pooled crop, the default
trainers run the method's settings and train every term, an accumulated step is the large-batch step, the
moving-average target moves once per applied optimizer step, the encoder's fusion comes before its norm, the
heads start at MAE's initialisation, and the collapse monitor reads what it says."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import python_in_process
from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.architecture.encoder import HybridEncoder
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective


def test_l1_is_the_crop_average_pooled_not_strided():
    crops = torch.randn(2, 1, 64, 64, 64)
    l1 = build_levels(crops, LevelConfig(), torch.Generator().manual_seed(0))[0].volumes
    assert torch.equal(l1, F.avg_pool3d(crops, 2))
    assert not torch.allclose(l1, crops[..., ::2, ::2, ::2])


def test_the_encoders_fusion_comes_before_its_final_norm():
    """ConvMAE adds the multi-scale fusion and then normalises: every output token is standardised (the norm
    starts as the identity affine), which adding the fusion after the norm would undo."""
    torch.manual_seed(0)
    encoder = HybridEncoder(1, **{k: v for k, v in preset_kwargs("T").items()
                                  if k not in ("preset", "n_conv_per_stage_decoder")})
    with torch.no_grad():
        for fusion in encoder.fusion:  # a fusion large enough to show
            fusion.weight.mul_(50)
        tokens = encoder.tokens(torch.randn(2, 1, 32, 32, 32)).tokens
    assert torch.allclose(tokens.mean(-1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(tokens.var(-1, unbiased=False), torch.ones(()), atol=1e-2)


def test_the_pretraining_heads_start_at_maes_initialisation():
    """Truncated normal (std 0.02) weights, zero biases: PyTorch's default (uniform, biases too) is not it."""
    torch.manual_seed(0)
    network = MiMPretrainNetwork(1, 2, **preset_kwargs("B"))
    linears = [m for part in (network.reconstruction, network.alignment) for m in part.modules()
               if isinstance(m, torch.nn.Linear)]
    assert len(linears) > 10
    for linear in linears:
        assert linear.bias is None or not linear.bias.any()
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.15)  # the default: 1 / sqrt(3 fan_in)


def test_the_collapse_monitors_are_the_spreads_of_the_heads_inputs_and_targets():
    torch.manual_seed(0)
    network = MiMPretrainNetwork(1, 2, **preset_kwargs("T"))
    levels = build_levels(torch.randn(2, 1, 64, 64, 64), LevelConfig(), torch.Generator().manual_seed(0))
    seen, targets = [], []

    def heads(pair, child, parent):
        seen.append(child)
        targets.append(network.alignment(pair, child, parent))
        return targets[-1]
    terms = mim_objective(network, heads, levels, 16, (1, 1, 1), 0.1)
    spread = lambda vectors: torch.stack([F.normalize(v.detach(), dim=-1).std(0).mean() for v in vectors]).mean()  # noqa: E731
    assert float(terms["feature_std"]) == pytest.approx(float(spread(seen)))
    assert float(terms["target_std"]) == pytest.approx(float(spread([t for _, t in targets])))
    # a collapsed encoder (every volume one vector) reads 0 whatever the heads' batch norm does
    constant = lambda volumes, hidden: tuple(o * 0 + 1 for o in network(volumes, hidden))  # noqa: E731
    assert float(mim_objective(constant, network.alignment, levels, 16, (1, 1, 1), 0.1)["feature_std"]) == 0.0


# the default trainers on the end-to-end dataset, at their first micro-step
TRAINER = """
import json, torch
from helpers import trainer_on_test_dataset
from nnunet_mim import variants

def started(name, **settings):
    base = getattr(variants, name)
    return trainer_on_test_dataset(type(name + "_Test", (base,), dict(settings, __module__=__name__)), started=True)
"""

SETTINGS_SCRIPT = TRAINER + """
out = {}
for name in ("nnUNetTrainerMiMPretrain_T_CPUsmoke", "nnUNetTrainerMAEPretrain_T_CPUsmoke"):
    t = started(name)
    levels, terms = t._objective(next(t.dataloader_train)["data"], torch.Generator().manual_seed(0))
    rec = [float(terms[f"rec_l{i + 1}"]) for i in range(len(levels))]
    align = [float(v) for k, v in terms.items() if k.startswith("align_")]
    t.network.zero_grad()
    terms["loss"].backward()
    out[name] = {"volumes": [lv.volumes.shape[0] for lv in levels], "batch": t.batch_size,
                 "tokens": levels[0].hidden[0].numel(),
                 "hidden": [float(lv.hidden.float().mean()) for lv in levels], "rec": rec, "align": align,
                 "loss": float(terms["loss"])}
print(json.dumps(out))
"""


def test_the_default_trainers_run_the_methods_settings_and_train_every_term(nnunet_env):
    """What mim-method.md specifies, observed in a step of the trainers (their CPU budgets change only the size
    and length): MiM's 1 + 4 + 16 volumes per sample hidden 50/60/50%, MAE's one level hidden 75%, and a loss
    that is every level's reconstruction (weights 1, 1, 1) plus 0.1 x each alignment term."""
    out = json.loads(python_in_process(SETTINGS_SCRIPT, nnunet_env).stdout.strip().splitlines()[-1])
    mim, mae = out["nnUNetTrainerMiMPretrain_T_CPUsmoke"], out["nnUNetTrainerMAEPretrain_T_CPUsmoke"]
    b, n = mim["batch"], mim["tokens"]
    hidden = lambda ratio, tokens: round(ratio * tokens) / tokens  # noqa: E731  (exact counts per volume)
    assert mim["volumes"] == [b, 4 * b, 16 * b]
    assert mim["hidden"] == pytest.approx([0.5, hidden(0.6, n), hidden(0.5, n)])
    assert mim["loss"] == pytest.approx(sum(mim["rec"]) + 0.1 * sum(mim["align"]), rel=1e-5)
    assert len(mim["align"]) == 2 and all(term > 0 for term in mim["rec"] + mim["align"])
    assert mae["volumes"] == [mae["batch"]] and mae["hidden"] == pytest.approx([hidden(0.75, mae["tokens"])])
    assert mae["loss"] == pytest.approx(mae["rec"][0], rel=1e-6)


ACCUMULATION_SCRIPT = TRAINER + """
captured = {}
clip = torch.nn.utils.clip_grad_norm_
def record_then_clip(parameters, max_norm, *args, **kwargs):
    parameters = list(parameters)
    captured["grads"] = [p.grad.clone() if p.grad is not None else None for p in parameters]
    return clip(parameters, max_norm, *args, **kwargs)
torch.nn.utils.clip_grad_norm_ = record_then_clip
t = started("nnUNetTrainerMAEPretrain_T_CPUsmoke", effective_batch=4, iterations_per_epoch=4)
a, b = next(t.dataloader_train), next(t.dataloader_train)
start = [p.detach().clone() for p in t.network.parameters()]
masks = t.mask_generator.get_state()
t.train_step(a)
after_first = captured.get("grads")
t.train_step(b)
accumulated = captured["grads"]
with torch.no_grad():  # the same weights and masks, both micro-batches as one batch of 4
    for p, w in zip(t.network.parameters(), start):
        p.copy_(w)
t.network.zero_grad()
generator = torch.Generator()
generator.set_state(masks)
_, terms_a = t._objective(a["data"], generator)
_, terms_b = t._objective(b["data"], generator)
((terms_a["loss"] + terms_b["loss"]) / 2).backward()
pairs = [(g, p.grad) for g, p in zip(accumulated, t.network.parameters()) if g is not None]
print(json.dumps({"stepped_after_first": after_first is not None, "compared": len(pairs),
                  "equal": all(torch.allclose(g, h, rtol=1e-4, atol=1e-7) for g, h in pairs)}))
"""


def test_an_accumulated_step_is_the_large_batch_step_on_the_same_crops(nnunet_env):
    """Two micro-steps of 2 crops accumulate the gradient of one batch of 4 (the mean of both losses), with the
    same weights and masks; the optimizer steps once, after the second."""
    out = json.loads(python_in_process(ACCUMULATION_SCRIPT, nnunet_env).stdout.strip().splitlines()[-1])
    assert not out["stepped_after_first"] and out["compared"] > 10 and out["equal"]


TARGET_SCRIPT = TRAINER + """
t = started("nnUNetTrainerMiMPretrain_T_CPUsmoke", effective_batch=4, iterations_per_epoch=4)
updates = []
update = t.pretrain_network.alignment.update_target
t.pretrain_network.alignment.update_target = lambda momentum: (updates.append(t.micro_step), update(momentum))
batch = next(t.dataloader_train)
bad = dict(batch, data=torch.full_like(batch["data"], float("nan")))
target = lambda: [p.detach().clone() for p in t.pretrain_network.alignment.parent.parameters()]
before = target()
t.train_step(bad)
t.train_step(batch)  # the accumulation with a non-finite micro-step: discarded
after_discard = target()
t.train_step(batch)
t.train_step(batch)
print(json.dumps({"updates": updates, "skipped": t.skipped_steps,
                  "unchanged_by_discard": all(torch.equal(x, y) for x, y in zip(before, after_discard)),
                  "moved": not all(torch.equal(x, y) for x, y in zip(after_discard, target()))}))
"""


def test_the_moving_average_target_moves_once_per_applied_optimizer_step(nnunet_env):
    out = json.loads(python_in_process(TARGET_SCRIPT, nnunet_env).stdout.strip().splitlines()[-1])
    assert out["skipped"] == 1 and out["unchanged_by_discard"]
    assert out["updates"] == [4] and out["moved"]  # after the 4th micro-step only: the one applied step


@pytest.mark.slow  # 100 steps of two forms of the heads on the CPU, about 2 minutes
def test_the_monitors_see_the_authors_form_collapse_and_read_healthy_on_the_default():
    """benchmarks/alignment_collapse.py's training: the authors' form (no predictor, no batch norm) wins its
    alignment by collapsing its heads, and target_std falls under its threshold; the default form keeps both
    monitors above theirs once past the first steps."""
    import importlib.util
    import os

    import numpy as np
    from nilearn.datasets import load_mni152_template

    from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "alignment_collapse.py")
    spec = importlib.util.spec_from_file_location("alignment_collapse", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    image = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    volume = torch.from_numpy((image - image[image > 0].mean()) / image[image > 0].std())
    column = {name: benchmark.TERMS.index(name) for name in COLLAPSE_THRESHOLDS}
    authors = benchmark.train("authors", volume, 100)[50:]
    default = benchmark.train("BYOL", volume, 100)[50:]
    assert authors[:, column["target_std"]].mean() < COLLAPSE_THRESHOLDS["target_std"]
    for name, threshold in COLLAPSE_THRESHOLDS.items():
        assert default[:, column[name]].mean() > threshold, name


def test_in_the_default_form_the_child_is_predicted_onto_the_target():
    """BYOL's form: the child's projection goes through the predictor before it meets the moving-average
    target; without the predictor the two sides are the same network and nothing keeps them from collapsing."""
    from nnunet_mim.pretraining.model import AlignmentHeads
    torch.manual_seed(0)
    heads = AlignmentHeads(6, 16, 1, predictor=True, batch_norm=True)
    child_features, parent_features = torch.randn(8, 6), torch.randn(8, 6)
    child, target = heads(0, child_features, parent_features)
    assert torch.allclose(child, heads.predictor[0](heads.child[0](child_features)))
    assert not torch.allclose(child, heads.child[0](child_features))
    assert torch.allclose(target, heads.parent[0](parent_features)) and not target.requires_grad
