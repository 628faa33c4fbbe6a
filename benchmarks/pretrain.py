"""Cost of one pre-training step: MiM (1+4+16 = 21 volumes per sample), MiM with 1+2+2 sub-volumes, and MAE (1), same
network and patch.

    python benchmarks/pretrain.py                          # CPU, preset S, patch 64^3, batch 1
    python benchmarks/pretrain.py --device cuda --preset B --patch 96 --batch 8
    python benchmarks/pretrain.py --backbone resenc --patch 32 --flops   # nnU-Net's ResEnc-M U-Net (a CNN)
    python benchmarks/pretrain.py --backbone primus --preset M --patch 32 --flops   # Primus-M, 8^3 tokens

The residual-encoder backbone is ResEnc-M's widths and depths as nnU-Net plans a cubic patch (32 features doubling
to 320, blocks 1-3-4-6-6-6, as many stages as halve the patch to 4 voxels); its memory is not predicted.

Per configuration: step time per sample (forward + backward + AdamW), the share of the step spent
building the levels and masks (goal: under 5%), and peak memory (GPU: torch's peak allocation;
CPU: growth of the peak RSS of a fresh process). Each configuration runs in its own process.
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def resenc_m_kwargs(patch: int) -> dict:
    """nnU-Net's ResEnc-M preset for a cubic ``patch`` (see the module docstring)."""
    import math

    import torch
    stages = min(6, int(math.log2(patch // 4)) + 1)
    return dict(n_stages=stages, features_per_stage=[min(32 * 2 ** i, 320) for i in range(stages)],
                conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * stages,
                strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), n_blocks_per_stage=[1, 3, 4, 6, 6, 6][:stages],
                n_conv_per_stage_decoder=[1] * (stages - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                nonlin_kwargs={"inplace": True})


def levels_of_methods() -> dict:
    from nnunet_mim.masking import LevelConfig
    return {"MAE": LevelConfig(num_levels=1, l1_mask_ratio=0.75), "MiM": LevelConfig(),
            "MiM-1+2+2": LevelConfig(l2_per_l1=2, l3_per_l2=1)}


def worker(method: str, preset: str, patch, batch: int, steps: int, device: str, auto_batch: bool,
           flops: bool, backbone: str = "hybrid") -> dict:
    """One configuration in this process. With ``auto_batch``, the micro-batch (and checkpointing) the trainers
    choose for this device's memory out of a plan batch of ``batch`` (pretraining/memory.py)."""
    import torch

    from nnunet_mim.architecture import preset_kwargs
    from nnunet_mim.flops import count_flops
    from nnunet_mim.masking import build_levels
    from nnunet_mim.pretraining.memory import choose_micro_batch, device_memory, predict_step
    from nnunet_mim.pretraining.model import MiMPretrainNetwork
    from nnunet_mim.pretraining.objective import mim_objective

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it
    cfg = levels_of_methods()[method]
    weights, alignment = ((1.0, 1.0, 1.0), 0.1) if method.startswith("MiM") else ((1.0,), 0.0)
    dtype = torch.bfloat16 if device == "cuda" else None
    memory = device_memory(torch.device(device))
    if backbone == "primus":
        from nnunet_mim.backbones.primus import PRIMUS_SIZES, PrimusBackbone, PrimusPretrainNetwork
        step_memory, cfg = None, PrimusBackbone.backbone_levels(cfg)
        net = PrimusPretrainNetwork(1, 2, **PRIMUS_SIZES[preset], input_shape=patch,
                                    alignment_pairs=2 if alignment else 0).to(device)
    elif backbone == "resenc":
        from nnunet_mim.backbones.resenc import ResEncPretrainNetwork
        step_memory = None
        net = ResEncPretrainNetwork(1, 2, alignment_pairs=2 if alignment else 0,
                                    **resenc_m_kwargs(patch[0])).to(device)
    else:
        step_memory = (choose_micro_batch(preset_kwargs(preset), cfg, patch, batch, memory, dtype=dtype)
                       if auto_batch and memory else predict_step(preset_kwargs(preset), cfg, patch, batch,
                                                                  dtype=dtype))
        batch = step_memory.micro_batch
        net = MiMPretrainNetwork(1, 2, alignment_pairs=2 if alignment else 0, **preset_kwargs(preset)).to(device)
        for stage in net.encoder.stages:
            stage.checkpoint_blocks = step_memory.checkpointing
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)
    crops = torch.randn(batch, 1, *[p * cfg.crop_factor for p in patch], device=device)
    generator = torch.Generator().manual_seed(0)
    amp = torch.autocast(device, dtype=dtype, enabled=dtype is not None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def forward_backward(levels):
        with amp:
            loss = mim_objective(net, net.alignment, levels, cfg.token_size, weights, alignment)["loss"]
        loss.backward()

    level_time = total = 0.0
    for step in range(steps + 1):  # step 0 warms up
        sync()
        start = time.perf_counter()
        levels = build_levels(crops, cfg, generator)
        sync()
        built = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        forward_backward(levels)
        optimizer.step()
        sync()
        if step == 0:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            continue
        level_time += built - start
        total += time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024)
    # model FLOPs of the same step (nnunet_mim/flops.py), counted on this device: about one step's time
    counted = count_flops(lambda: forward_backward(build_levels(crops, cfg, generator))) if flops else 0
    return {"seconds_per_sample": total / steps / batch, "level_share": level_time / total, "peak_mb": peak,
            "predicted_mb": step_memory.total / 2 ** 20 if step_memory else float("nan"), "batch": batch,
            "checkpointing": bool(step_memory and step_memory.checkpointing),
            "flops_per_sample": counted / batch,
            "volumes_per_sample": sum(lv.volumes.shape[0] for lv in levels) // batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="S")
    parser.add_argument("--patch", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--auto-batch", action="store_true", help="the micro-batch the trainers choose for this "
                        "device's memory out of a plan batch of --batch")
    parser.add_argument("--flops", action="store_true", help="count the step's FLOPs too")
    parser.add_argument("--backbone", choices=["hybrid", "resenc", "primus"], default="hybrid",
                        help="with primus, --preset is its size (T, S, B, M, L)")
    parser.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    parser.add_argument("--worker-patch", type=int, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.worker_patch, args.batch, args.steps, args.device,
                                args.auto_batch, args.flops, args.backbone)))
        return
    network = {"resenc": "ResEnc-M (nnU-Net's plan of a cubic patch)", "primus": f"Primus-{args.preset}"}.get(
        args.backbone, f"preset {args.preset}")
    print(f"device {args.device}, {network}, batch {args.batch}, mean of {args.steps} steps after a warm-up; random "
          "input")
    print("| patch | method | volumes / sample | step time / sample (s) | / MAE | GFLOP / sample | / MAE "
          "FLOPs | levels + masks share | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for patch in args.patch:
        results = {}
        for method in levels_of_methods():
            out = subprocess.run([sys.executable, __file__, "--worker", method, "--device", args.device, "--preset",
                                  args.preset, "--worker-patch", *[str(patch)] * 3, "--batch", str(args.batch),
                                  "--steps", str(args.steps), "--backbone", args.backbone,
                                  *(["--flops"] if args.flops else [])], capture_output=True, text=True, check=True)
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        for method, r in results.items():
            ratio = r["seconds_per_sample"] / results["MAE"]["seconds_per_sample"]
            mae_flops = results["MAE"]["flops_per_sample"]
            flops = (f"{r['flops_per_sample'] / 1e9:.1f} | {r['flops_per_sample'] / mae_flops:.1f}" if args.flops
                     else "not counted | -")
            print(f"| {patch}^3 | {method} | {r['volumes_per_sample']} | {r['seconds_per_sample']:.3f} | {ratio:.1f} | "
                  f"{flops} | {r['level_share']:.1%} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
