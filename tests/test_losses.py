"""Reconstruction and alignment losses; the alignment pairs each child with its own parent."""
import torch

from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.losses import alignment_loss, normalized_targets, patchify, reconstruction_loss, unpatchify
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import MiMPretrainNetwork
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


def test_alignment_loss_values_and_stop_gradient():
    a = torch.randn(4, 8, requires_grad=True)
    parent = torch.randn(4, 8, requires_grad=True)
    assert torch.isclose(alignment_loss(a, a.detach() * 3), torch.tensor(0.0), atol=1e-6)
    assert torch.isclose(alignment_loss(a, -a.detach()), torch.tensor(4.0))
    alignment_loss(a, parent).backward()
    assert parent.grad is None and a.grad is not None


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
        terms = mim_objective(net, net.project, levels, 16, (1, 1, 1), 0.1)
        assert set(terms) == {"rec_l1", "rec_l2", "rec_l3", "align_l1_l2", "align_l2_l3", "loss", "proj_std"}
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_collapse_monitor_sees_a_collapsed_projector():
    torch.manual_seed(0)
    net = MiMPretrainNetwork(1, 2, **preset_kwargs("T"))
    levels = build_levels(torch.randn(2, 1, 64, 64, 64), LevelConfig(), torch.Generator().manual_seed(0))
    healthy = mim_objective(net, net.project, levels, 16, (1, 1, 1), 0.1)["proj_std"]
    constant = lambda f: net.project(f) * 0 + 1  # noqa: E731  every volume -> one vector
    collapsed = mim_objective(net, constant, levels, 16, (1, 1, 1), 0.1)
    assert healthy > 0.01 and float(collapsed["proj_std"]) == 0.0
    assert collapsed["align_l1_l2"].item() < 1e-6  # the trivial way to win the alignment loss


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
