"""Model FLOPs of a step, counted by torch's ``FlopCounterMode`` with two of its formulas corrected.

* Convolution backward: torch's formula ignores ``groups``, so a depthwise convolution's backward is counted
  as if it were a dense one (the encoder's 5^3 depthwise convolutions 48-192x over). Here each gradient
  asked for (input, weight) costs exactly the forward's multiply-adds, which ``conv_flop_count`` gets right
  because the weight's shape holds the channels per group.
* Attention on the CPU: the fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no formula
  and counts 0. It gets the one torch uses for the CUDA kernels.

The GPU check counts on the device it measures, where one counted step costs about one step.
"""
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                 **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CORRECTIONS = {aten.convolution_backward: convolution_backward_flops,
               aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops}


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of everything ``step`` runs (forward and backward alike), with the corrections above."""
    with FlopCounterMode(display=False, custom_mapping=CORRECTIONS) as counter:
        step()
    return counter.get_total_flops()
