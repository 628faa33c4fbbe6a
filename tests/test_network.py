"""The hybrid network: shapes, patch-size independence, the masking invariant, nnU-Net build."""
import pytest
import torch

from nnunet_mim.architecture import MiMHybridUNet, check_patch_size, preset_kwargs
from nnunet_mim.plans import NETWORK_CLASS, adapt_plans


def tiny(input_channels=1, num_classes=3, **kw):
    torch.manual_seed(0)
    return MiMHybridUNet(input_channels, num_classes, **preset_kwargs("T"), **kw)


@pytest.mark.parametrize("channels,classes,patch", [(1, 2, (32, 32, 32)), (4, 5, (16, 48, 32)), (2, 3, (64, 32, 16))])
def test_deep_supervision_outputs(channels, classes, patch):
    out = tiny(channels, classes)(torch.randn(2, channels, *patch))
    assert [tuple(o.shape) for o in out] == [(2, classes, *(p // 2 ** i for p in patch)) for i in range(4)]


def test_without_deep_supervision_one_output():
    net = tiny()
    net.decoder.deep_supervision = False
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_one_state_dict_for_every_patch_size():
    """Nothing in the network is sized by the patch: one state dict runs at every patch size."""
    state = tiny().state_dict()
    net = tiny()
    net.load_state_dict(state, strict=True)
    net.eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        for patch in [(64, 64, 64), (96, 96, 96), (128, 128, 64), (160, 160, 160)]:
            assert net(torch.zeros(1, 1, *patch)).shape == (1, 3, *patch)


def test_invalid_patch_names_nearest_sizes():
    with pytest.raises(ValueError, match=r"nearest valid sizes: \[32, 224, 192\] or \[48, 224, 192\]"):
        check_patch_size((40, 224, 192))
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny()(torch.randn(1, 1, 40, 32, 32))


def test_parameter_counts_of_presets_are_pinned():
    counts = {}
    for name in ("T", "S", "B"):
        net = MiMHybridUNet(1, 3, **preset_kwargs(name))
        counts[name] = (sum(p.numel() for p in net.encoder.parameters()), sum(p.numel() for p in net.parameters()))
    print(counts)
    assert counts == {"T": (348928, 443340), "S": (8468928, 10516524), "B": (33767888, 38560060)}


def test_hidden_voxels_never_reach_visible_tokens():
    """Perturb the voxels of hidden tokens (without zeroing them first): the encoder's features
    of the visible tokens do not change, so neither can a prediction made from them."""
    net = tiny().eval()
    x = torch.randn(2, 1, 64, 64, 32)
    visible = torch.rand(2, 4, 4, 2) > 0.5
    visible[:, 0, 0, 0] = True
    visible[1] = visible[0]  # same count per sample
    hidden_voxels = (~visible).repeat_interleave(16, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)[:, None]
    y = x + hidden_voxels * torch.randn_like(x) * 10
    with torch.no_grad():
        a, b = net.encoder.tokens(x, visible), net.encoder.tokens(y, visible)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5)
    assert not torch.allclose(x, y)
    # the conv features are equal at visible positions too (the depthwise branch is gated)
    for i, (fa, fb) in enumerate(zip(a.conv_features, b.conv_features)):
        scale = 16 // 2 ** (i + 1)
        v = visible.repeat_interleave(scale, 1).repeat_interleave(scale, 2).repeat_interleave(scale, 3)[:, None]
        assert torch.allclose(fa * v, fb * v, atol=1e-5)


def test_ungated_block_would_leak(monkeypatch):
    """Control for the test above: the same masked forward and perturbation, with the blocks' gate
    switched off, changes the visible tokens; so the test above would see a missing gate."""
    from nnunet_mim.architecture.blocks import MaskedConvBlock
    gated = MaskedConvBlock.forward
    monkeypatch.setattr(MaskedConvBlock, "forward", lambda self, x, visible=None: gated(self, x, None))
    net = tiny().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    visible = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    visible[0, 0] = True
    hidden_voxels = (~visible).repeat_interleave(16, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)[:, None]
    y = x + hidden_voxels * 10.0
    with torch.no_grad():
        a = net.encoder.tokens(x, visible).tokens
        b = net.encoder.tokens(y, visible).tokens
    assert not torch.allclose(a, b, atol=1e-3)


def test_adapt_plans_and_build_through_nnunet(example_plans):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = adapt_plans(example_plans, "3d_fullres", "T")
    cm = PlansManager(plans).get_configuration("3d_fullres")
    assert cm.patch_size == [32, 224, 192]  # 40 rounded down to a multiple of 16, spacing unchanged
    assert cm.spacing == example_plans["configurations"]["3d_fullres"]["spacing"]
    assert cm.network_arch_class_name == NETWORK_CLASS
    assert [list(p) for p in cm.pool_op_kernel_sizes] == [[1, 1, 1]] + [[2, 2, 2]] * 4
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 2, 4, deep_supervision=True)
    assert isinstance(net, MiMHybridUNet)
    assert net(torch.randn(1, 2, 32, 64, 48))[0].shape == (1, 4, 32, 64, 48)
    for key in (net.key_to_encoder, net.key_to_stem, *net.keys_to_in_proj):
        net.get_submodule(key)
    assert adapt_plans(example_plans, "3d_fullres", "T", patch_multiple=32)["configurations"]["3d_fullres"][
        "patch_size"] == [32, 224, 192]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_finetuning_step_under_autocast(dtype):
    """nnU-Net fine-tunes under fp16 autocast on CUDA (bf16 where our pre-training runs): the hybrid network's
    forward, nnU-Net's deep-supervised Dice + CE and the backward, in that precision on the CPU. Outputs in the
    autocast dtype, loss and gradients finite, weights fp32."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    torch.manual_seed(0)
    net = MiMHybridUNet(1, 3, deep_supervision=True, **preset_kwargs("T"))
    x = torch.randn(2, 1, 32, 32, 32)
    target = torch.randint(0, 3, (2, 1, 32, 32, 32)).float()
    with torch.autocast("cpu", dtype=dtype):
        outputs = net(x)
        targets = [torch.nn.functional.interpolate(target, size=o.shape[2:], mode="nearest") for o in outputs]
        dice = {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}
        loss = DeepSupervisionWrapper(DC_and_CE_loss(dice, {}, weight_ce=1, weight_dice=1,
                                                     dice_class=MemoryEfficientSoftDiceLoss),
                                      [1 / 2 ** i for i in range(len(outputs))])(outputs, targets)
    assert outputs[0].dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_the_compiled_finetuning_network_computes_what_the_eager_one_does():
    """Fine-tuning keeps nnU-Net's torch.compile on CUDA: the network traces into one graph without a break
    (aot_eager: dynamo and autograd's tracing, without code generation) and gives the eager outputs."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = MiMHybridUNet(1, 3, deep_supervision=True, **preset_kwargs("T")).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        eager = net(x)
        compiled = torch.compile(net, backend="aot_eager")(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, compiled))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
