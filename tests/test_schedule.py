"""Fine-tuning optimisation: layer-wise lr decay follows the encoder's depth, a decoder-first
start keeps the pre-trained encoder still, a frozen encoder never moves, and the defaults change nothing."""
import torch

from nnunet_mim.geometry import STRIDES
from nnunet_mim.architecture.network import MiMHybridUNet
from nnunet_mim.architecture.presets import preset_kwargs
from nnunet_mim.finetuning.param_groups import NEW_PREFIXES, encoder_depth, finetuning_param_groups
from nnunet_mim.schedule import WarmupCosineLR


def network():
    return MiMHybridUNet(1, 3, **preset_kwargs("T"), strides=STRIDES)


def lr_of(optimizer, parameter):
    return next(g["lr"] for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_depths_follow_the_encoder():
    blocks = 2
    assert encoder_depth("encoder.stages.0.blocks.0.dwconv.weight", blocks) == 1
    assert encoder_depth("encoder.stages.2.downsample.0.weight", blocks) == 3
    assert encoder_depth("encoder.patch_embed.weight", blocks) == 4
    assert encoder_depth("encoder.fusion.1.weight", blocks) == 4
    assert encoder_depth("encoder.blocks.1.attn.qkv.weight", blocks) == 6
    assert encoder_depth("encoder.norm.weight", blocks) == 7
    for new in ("encoder.stem.0.weight", "decoder.stages.0.convs.0.conv.weight", "decoder.seg_layers.0.weight"):
        assert encoder_depth(new, blocks) == 8


def test_every_parameter_in_exactly_one_group_and_no_decay_on_norms():
    net = network()
    groups = finetuning_param_groups(net, 0.05, 0.75)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(net.parameters()))
    norm_weight = net.encoder.norm.weight
    assert next(g for g in groups if any(p is norm_weight for p in g["params"]))["weight_decay"] == 0.0


def test_layer_decay_scales_learning_rates_by_depth():
    net = network()
    optimizer = torch.optim.AdamW(finetuning_param_groups(net, 0.05, layer_decay=0.5), lr=1e-3)
    scheduler = WarmupCosineLR(optimizer, 1e-3, warmup_epochs=1, max_epochs=10)
    scheduler.step(1)
    peak = scheduler.lr_at(1)
    assert lr_of(optimizer, net.decoder.seg_layers[0].weight) == peak
    assert lr_of(optimizer, net.encoder.blocks[1].attn.qkv.weight) == peak * 0.5 ** 2
    first_stage = next(net.encoder.stages[0].parameters())
    assert lr_of(optimizer, first_stage) == peak * 0.5 ** 7
    assert optimizer.param_groups[0]["lr"] == peak  # what nnU-Net logs: the new layers' rate


def test_decoder_first_keeps_the_encoder_still_then_warms_it_up():
    net = network()
    optimizer = torch.optim.AdamW(finetuning_param_groups(net, 0.05, encoder_start_epoch=3), lr=1e-3)
    scheduler = WarmupCosineLR(optimizer, 1e-3, warmup_epochs=2, max_epochs=20)
    block, head = net.encoder.blocks[0].attn.qkv.weight, net.decoder.seg_layers[0].weight
    for epoch in range(3):
        scheduler.step(epoch)
        assert lr_of(optimizer, block) == 0.0 and lr_of(optimizer, head) > 0
    scheduler.step(3)
    assert 0 < lr_of(optimizer, block) < lr_of(optimizer, head)  # the encoder's own warm-up
    scheduler.step(19)
    assert lr_of(optimizer, block) > 0 and lr_of(optimizer, head) > 0


def test_a_frozen_encoder_never_moves_while_the_new_layers_learn():
    """FrozenEncoder (encoder_frozen_fraction 1): AdamW at lr 0 leaves every pre-trained tensor
    exactly as loaded, weight decay included (AdamW scales it by the lr), through the whole
    schedule; the stem, decoder and heads train."""
    from nnunet_mim.variants import FrozenEncoder
    torch.manual_seed(0)
    net, epochs = network(), 4
    start = round(FrozenEncoder.encoder_frozen_fraction * epochs)
    assert start == epochs
    optimizer = torch.optim.AdamW(finetuning_param_groups(net, 0.05, encoder_start_epoch=start), lr=1e-3)
    scheduler = WarmupCosineLR(optimizer, 1e-3, warmup_epochs=1, max_epochs=epochs)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    x = torch.randn(1, 1, 32, 32, 32)
    for epoch in range(epochs):
        scheduler.step(epoch)
        optimizer.zero_grad()
        net(x)[0].square().mean().backward()
        optimizer.step()
    moved = {name for name, p in net.named_parameters() if not torch.equal(p, before[name])}
    pretrained = {name for name in before if not name.startswith(NEW_PREFIXES)}
    assert len(pretrained) > 20 and not moved & pretrained
    for new_layers in ("encoder.stem.", "decoder.stages.", "decoder.seg_layers."):
        assert any(name.startswith(new_layers) for name in moved), new_layers


def test_defaults_are_one_plain_schedule():
    net = network()
    optimizer = torch.optim.AdamW(finetuning_param_groups(net, 0.05), lr=1e-3)
    scheduler = WarmupCosineLR(optimizer, 1e-3, warmup_epochs=2, max_epochs=20)
    for epoch in (0, 1, 5, 19):
        scheduler.step(epoch)
        assert {g["lr"] for g in optimizer.param_groups} == {scheduler.lr_at(epoch)}
