"""Forward + backward cost of the hybrid network (preset B) next to nnU-Net's ResEnc-M U-Net.

    python benchmarks/network.py                     # CPU, patches 96^3 and 128^3, batch 1
    python benchmarks/network.py --device cuda       # GPU: absolute times and peak memory, fp16 autocast

Each measurement runs in a fresh process, so the peak memory (CPU: peak RSS growth; GPU: torch's
peak allocation) belongs to that network alone. On the CPU only the ratios mean anything.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

NETWORKS = ["MiMHybridUNet-B", "ResEncUNet-M"]


def build(name: str):
    import torch.nn as nn
    if name == "MiMHybridUNet-B":
        from nnunet_mim.architecture import MiMHybridUNet, preset_kwargs
        return MiMHybridUNet(1, 3, **preset_kwargs("B"))
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    # nnU-Net's ResEnc-M planner at a 96^3 / 128^3 patch: 6 stages, 32..320 features
    return ResidualEncoderUNet(
        input_channels=1, n_stages=6, features_per_stage=(32, 64, 128, 256, 320, 320), conv_op=nn.Conv3d,
        kernel_sizes=3, strides=(1, 2, 2, 2, 2, 2), n_blocks_per_stage=(1, 3, 4, 6, 6, 6), num_classes=3,
        n_conv_per_stage_decoder=(1, 1, 1, 1, 1), conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True)


def worker(name: str, size: int, device: str, repeats: int) -> dict:
    import torch
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it
    net = build(name).to(device)
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 1, size, size, size, device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):  # as nnU-Net trains on CUDA
            out = net(x)
        sum(o.float().mean() for o in out).backward()
        net.zero_grad(set_to_none=True)

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"params": params, "seconds": (time.perf_counter() - start) / repeats, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("NETWORK", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.device, args.repeats)))
        return
    print(f"device {args.device}, batch 1, forward + backward, mean of {args.repeats} steps after one warm-up")
    print("| patch | network | parameters (M) | step (s) | peak memory (MB) | step / ResEnc-M | memory / ResEnc-M |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        results = {}
        for name in NETWORKS:
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                                  "--worker", name, str(size)], capture_output=True, text=True, check=True)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        ref = results["ResEncUNet-M"]
        for name, r in results.items():
            print(f"| {size}^3 | {name} | {r['params'] / 1e6:.1f} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                  f"{r['seconds'] / ref['seconds']:.2f} | {r['peak_mb'] / ref['peak_mb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
