"""Cost of one pre-training step: MiM (21 volumes per sample) vs MAE (1), same network and patch.

    python benchmarks/pretrain.py                          # CPU, preset S, patch 64^3, batch 1
    python benchmarks/pretrain.py --device cuda --preset B --patch 96 --batch 8

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


def worker(method: str, preset: str, patch: int, batch: int, steps: int, device: str) -> dict:
    import torch

    from nnunet_mim.architecture import preset_kwargs
    from nnunet_mim.masking import LevelConfig, build_levels
    from nnunet_mim.pretraining.model import MiMPretrainNetwork
    from nnunet_mim.pretraining.objective import mim_objective

    torch.manual_seed(0)
    cfg = LevelConfig() if method == "MiM" else LevelConfig(num_levels=1, l1_mask_ratio=0.75)
    weights, alignment = ((1.0, 1.0, 1.0), 0.1) if method == "MiM" else ((1.0,), 0.0)
    net = MiMPretrainNetwork(1, 2, alignment_pairs=2 if alignment else 0, **preset_kwargs(preset)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-4)
    crop = patch * cfg.crop_factor
    crops = torch.randn(batch, 1, crop, crop, crop, device=device)
    generator = torch.Generator().manual_seed(0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    level_time = total = 0.0
    for step in range(steps + 1):  # step 0 warms up
        sync()
        start = time.perf_counter()
        levels = build_levels(crops, cfg, generator)
        sync()
        built = time.perf_counter()
        with amp:
            loss = mim_objective(net, net.alignment, levels, 16, weights, alignment)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
    return {"seconds_per_sample": total / steps / batch, "level_share": level_time / total, "peak_mb": peak,
            "volumes_per_sample": sum(lv.volumes.shape[0] for lv in levels) // batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="S")
    parser.add_argument("--patch", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.patch[0], args.batch, args.steps, args.device)))
        return
    print(f"device {args.device}, preset {args.preset}, batch {args.batch}, mean of {args.steps} steps after a "
          "warm-up; random input")
    print("| patch | method | volumes / sample | step time / sample (s) | MiM / MAE | levels + masks share | "
          "peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for patch in args.patch:
        results = {}
        for method in ("MAE", "MiM"):
            out = subprocess.run([sys.executable, __file__, "--worker", method, "--device", args.device, "--preset",
                                  args.preset, "--patch", str(patch), "--batch", str(args.batch), "--steps",
                                  str(args.steps)], capture_output=True, text=True, check=True)
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        for method, r in results.items():
            ratio = r["seconds_per_sample"] / results["MAE"]["seconds_per_sample"]
            print(f"| {patch}^3 | {method} | {r['volumes_per_sample']} | {r['seconds_per_sample']:.3f} | {ratio:.1f} | "
                  f"{r['level_share']:.1%} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
