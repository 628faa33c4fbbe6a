"""The FLOP count the GPU check divides by: a depthwise convolution's backward and CPU attention counted as
the arithmetic says (torch's own counter is 16x over on the first and counts 0 for the second)."""
import torch

from nnunet_mim.flops import count_flops


def test_a_depthwise_convolution_backward_costs_what_its_forward_costs_per_gradient():
    conv = torch.nn.Conv3d(48, 48, 5, padding=2, groups=48, bias=False)
    x = torch.randn(1, 48, 8, 8, 8, requires_grad=True)
    forward = 2 * 48 * 8 ** 3 * 5 ** 3  # one multiply-add per output voxel, channel and kernel tap
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward  # grad input + grad weight
    x.requires_grad_(False)
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward  # grad weight only


def test_a_dense_convolution_is_counted_as_torch_counts_it():
    conv = torch.nn.Conv3d(8, 16, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 6, 6, 6, requires_grad=True)
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * 2 * 2 * 16 * 6 ** 3 * 8 * 27


def test_attention_on_the_cpu_is_counted():
    q, k, v = (torch.randn(2, 8, n, 48, requires_grad=True) for n in (100, 60, 60))
    forward = 2 * 2 * 8 * 100 * 60 * 48 * 2  # QK^T and PV
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == forward
    backward = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    assert backward == forward + 5 * forward // 2  # torch's CUDA formula: five matrix products in the backward
