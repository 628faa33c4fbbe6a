"""Reconstruction and alignment losses; the alignment pairs each child with its own parent."""
import pytest
import torch

from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.losses import alignment_loss, normalized_targets, patchify, reconstruction_loss, unpatchify
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import AlignmentHeads, MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective, parent_features


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 32, 48, 16)
    assert torch.equal(unpatchify(patchify(x, 16), 3, (2, 3, 1), 16), x)


def test_targets_are_normalised_per_token():
    t = normalized_targets(torch.randn(1, 1, 32, 32, 32) * 5 + 3, 16)
    assert torch.allclose(t.mean(-1), torch.zeros(1, 8), atol=1e-5)
    assert torch.allclose(t.std(-1, unbiased=False), torch.ones(1, 8), atol=1e-3)


def test_reconstruction_loss_only_counts_hidden_tokens():
    volumes = torch.randn(1, 1, 32, 32, 32)
    hidden = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    hidden[0, 0, 0, 0] = True
    perfect = normalized_targets(volumes, 16)
    wrong_visible = perfect.clone()
    wrong_visible[:, 1:] += 100  # tokens 1.. are visible
    assert reconstruction_loss(wrong_visible, volumes, hidden, 16) < 1e-8
    wrong_hidden = perfect.clone()
    wrong_hidden[:, 0] += 1
    assert torch.isclose(reconstruction_loss(wrong_hidden, volumes, hidden, 16), torch.tensor(1.0))


def test_alignment_loss_values():
    a = torch.randn(4, 8)
    assert torch.isclose(alignment_loss(a, a * 3), torch.tensor(0.0), atol=1e-6)
    assert torch.isclose(alignment_loss(a, -a), torch.tensor(4.0))


MIM_LEVELS = build_levels(torch.randn(2, 1, 64, 64, 64), LevelConfig(), torch.Generator().manual_seed(0))


def objective_on_features(features: torch.Tensor, heads: AlignmentHeads):
    """``mim_objective`` with a stand-in network that returns ``features`` as the token features of
    every volume (L1 first, then L2, then L3), so that each level's part can be changed and traced."""
    def masked_forward(volumes, hidden):
        return torch.zeros(volumes.shape[0], features.shape[1], 16 ** 3), features
    return mim_objective(masked_forward, heads, MIM_LEVELS, 16, (1, 1, 1), 0.1)


def level_slices():
    sizes = [level.volumes.shape[0] for level in MIM_LEVELS]
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("predictor", [False, True])
def test_each_alignment_term_reads_its_parent_level(predictor):
    """The authors' L1-L2 term compared an L2 feature with its own projection: changing the L1
    features must change the L1-L2 term (and only it), and the term must be the child's own
    projection against the projection of its own parent region."""
    torch.manual_seed(0)
    heads = AlignmentHeads(6, 16, 2, predictor, batch_norm=predictor)
    l1, l2, l3 = level_slices()
    features = torch.randn(l3.stop, 8, 6)
    terms = objective_on_features(features, heads)
    changed_l1 = features.clone()
    changed_l1[l1] += torch.randn_like(changed_l1[l1])
    changed = objective_on_features(changed_l1, heads)
    assert not torch.isclose(changed["align_l1_l2"], terms["align_l1_l2"])
    assert torch.equal(changed["align_l2_l3"], terms["align_l2_l3"])
    child, target = heads(0, features[l2].mean(1), parent_features(features[l1], MIM_LEVELS[1]))
    assert torch.isclose(terms["align_l1_l2"], alignment_loss(child, target))


@pytest.mark.parametrize("predictor", [False, True])
def test_alignment_gradient_reaches_the_child_never_the_parent_features(predictor):
    """Stop-gradient on the parent side: the alignment terms train the child's features and leave
    the parent's alone (swap the stop-gradient and L1 would get the gradient L2 should). The parent
    projector trains in the authors' form and follows the child projector (no gradient) with a predictor."""
    torch.manual_seed(0)
    heads = AlignmentHeads(6, 16, 2, predictor, batch_norm=predictor)
    l1, l2, l3 = level_slices()
    features = torch.randn(l3.stop, 8, 6, requires_grad=True)
    objective_on_features(features, heads)["align_l1_l2"].backward()
    assert features.grad[l1].abs().max() == 0
    assert features.grad[l2].abs().min() > 0
    assert features.grad[l3].abs().max() == 0  # the L2-L3 term is not in this backward
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in heads.child[0].parameters())
    parent_grads = [p.grad for p in heads.parent[0].parameters()]
    if predictor:
        assert all(g is None for g in parent_grads)
    else:
        assert all(g is not None and g.abs().max() > 0 for g in parent_grads)


def test_moving_average_target_follows_the_child_projector():
    torch.manual_seed(0)
    heads = AlignmentHeads(6, 16, 1, predictor=True, batch_norm=True)
    assert all(torch.equal(a, b) for a, b in zip(heads.parent.parameters(), heads.child.parameters()))
    with torch.no_grad():
        for p in heads.child.parameters():
            p.add_(1.0)
    before = [p.clone() for p in heads.parent.parameters()]
    heads.update_target(0.99)
    for old, new, online in zip(before, heads.parent.parameters(), heads.child.parameters()):
        assert torch.allclose(new, 0.99 * old + 0.01 * online)
    authors = AlignmentHeads(6, 16, 1, predictor=False, batch_norm=False)
    frozen = [p.clone() for p in authors.parent.parameters()]
    authors.update_target(0.99)  # nothing to follow: the parent projector is trained
    assert all(torch.equal(a, b) for a, b in zip(frozen, authors.parent.parameters()))


def test_each_child_is_paired_with_its_own_parent_region():
    """The authors' L1-L2 term compared an L2 feature with its own projection; here the parent
    feature of L2 volume i is the mean of L1 features over exactly the octant it was cut from."""
    crops = torch.randn(2, 1, 64, 64, 64)
    l1, l2, _ = build_levels(crops, LevelConfig(), torch.Generator().manual_seed(0))
    features = torch.randn(2, 8, 5)  # L1 token features (2 volumes, 2x2x2 tokens)
    got = parent_features(features, l2)
    for i in range(l2.volumes.shape[0]):
        b = int(l2.parent_index[i])
        expected = features[b][l2.parent_tokens[i].flatten()].mean(0)
        assert torch.allclose(got[i], expected)
    # different children of one sample get different parents (their own octants)
    assert not torch.allclose(got[0], got[1])


def test_objective_terms_and_loss_decreases():
    torch.manual_seed(0)
    net = MiMPretrainNetwork(1, 2, **preset_kwargs("T"))
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    crops = torch.randn(2, 1, 64, 64, 64).cumsum(2).cumsum(3) / 40  # smooth, learnable structure
    losses = []
    for step in range(30):
        levels = build_levels(crops, LevelConfig(), torch.Generator().manual_seed(step))
        terms = mim_objective(net, net.alignment, levels, 16, (1, 1, 1), 0.1)
        assert set(terms) == {"rec_l1", "rec_l2", "rec_l3", "align_l1_l2", "align_l2_l3", "loss", "feature_std",
                              "target_std"}
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        net.alignment.update_target(0.99)
        losses.append([terms[k].item() for k in ("loss", "rec_l1")])
    first, last = torch.tensor(losses[:5]).mean(0), torch.tensor(losses[-5:]).mean(0)
    # the total and L1's reconstruction (the level with most context) fall within 30 steps
    assert (last < 0.95 * first).all(), losses


def test_heads_that_map_everything_to_one_vector_win_the_alignment_loss_trivially():
    """Why the monitor exists: constant heads drive every alignment term to 0 without learning anything."""
    torch.manual_seed(0)
    net = MiMPretrainNetwork(1, 2, **preset_kwargs("T"))
    levels = build_levels(torch.randn(2, 1, 64, 64, 64), LevelConfig(), torch.Generator().manual_seed(0))
    constant = lambda pair, child, parent: (net.alignment(pair, child, parent)[0] * 0 + 1,) * 2  # noqa: E731
    collapsed = mim_objective(net, constant, levels, 16, (1, 1, 1), 0.1)
    assert collapsed["align_l1_l2"].item() < 1e-6 and collapsed["align_l2_l3"].item() < 1e-6


def test_hidden_voxels_never_reach_hidden_predictions():
    """Change what lies under hidden tokens: the reconstruction of every token stays the same."""
    torch.manual_seed(0)
    net = MiMPretrainNetwork(1, 2, **preset_kwargs("T")).eval()
    x = torch.randn(3, 1, 32, 64, 32)
    hidden = torch.rand(3, 2, 4, 2) > 0.5
    hidden[:, 0, 0, 0] = False
    hidden_voxels = hidden.repeat_interleave(16, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)[:, None]
    y = torch.where(hidden_voxels, torch.randn_like(x) * 10, x)
    with torch.no_grad():
        (pa, fa), (pb, fb) = net(x, hidden), net(y, hidden)
    assert torch.allclose(pa, pb, atol=1e-5) and torch.allclose(fa, fb, atol=1e-5)


def test_a_collapsed_alignment_is_said_in_the_log():
    """A collapse monitor under its threshold for 3 epochs after the warm-up: the epoch's log says which."""
    from types import SimpleNamespace

    from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain

    def warnings_for(feature_std, target_std=(0.05,) * 9, warmup_epochs=1):
        lines = []
        curves = {"train_feature_std": list(feature_std), "train_target_std": list(target_std)}
        trainer = SimpleNamespace(loss_terms=["rec_l1", "feature_std", "target_std"], run_warmup_epochs=warmup_epochs,
                                  logger=SimpleNamespace(get_value=lambda key, step: curves[key]),
                                  print_to_log_file=lines.append)
        nnUNetTrainerMiMPretrain.warn_if_collapsed(trainer)
        return lines

    (line,) = warnings_for([0.05, 0.004, 0.003, 0.002])
    assert "WARNING: the alignment has collapsed" in line and "feature_std has been below 0.02 for 3 epochs" in line
    assert "the encoder maps every volume" in line
    assert warnings_for([0.05, 0.004, 0.003, 0.03]) == []  # it recovered
    assert warnings_for([0.001, 0.001, 0.001]) == []  # at initialisation: only two epochs after the warm-up
    assert warnings_for([0.001, 0.001, 0.001, 0.001]) != []
    (line,) = warnings_for([0.05] * 4, target_std=[0.05, 0.001, 0.001, 0.001])  # the authors' form's collapse
    assert "target_std has been below 0.01" in line and "the alignment heads map every volume" in line
