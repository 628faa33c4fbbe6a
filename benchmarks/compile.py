"""Does torch.compile pay for our networks? nnU-Net compiles the network of every CUDA run
(``nnUNet_compile``, on by default), pre-training's too; this measures what that does, eager against
compiled, each in a fresh process:

    finetune   the hybrid U-Net (fixed shapes): forward + backward with nnU-Net's deep supervision
    pretrain   MiM's masked forward through the objective, new levels and masks every step (the number
               of visible tokens per level changes with the mask: what recompiles)

Per arm and mode: seconds to the first step (compile included), median step after it, the graphs
dynamo built, its graph breaks and its recompiles. On CUDA each step runs under bf16 autocast with
cudnn.benchmark, as the trainers run; the pretrain arm's crops are ``crop_factor`` x the patch, as the
trainer's loader cuts them. ``--backend inductor`` (default) generates code; ``aot_eager`` only
traces (fast: what a test can afford).

    python benchmarks/compile.py --preset T --patch 64 --steps 20 [--device cuda]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, sys, time, torch, torch._dynamo
from torch._dynamo.utils import counters
from nnunet_mim.architecture import MiMHybridUNet, preset_kwargs
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.model import MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective
arm, mode, preset, patch, steps, device, backend = sys.argv[1:8]
patch, steps, device = int(patch), int(steps), torch.device(device)
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
x = torch.randn(2, 1, patch, patch, patch, device=device)
if arm == "finetune":
    net = MiMHybridUNet(1, 3, deep_supervision=True, **preset_kwargs(preset)).to(device)
    model = torch.compile(net, backend=backend) if mode == "compiled" else net
    def step(i):
        with amp:
            return sum(o.float().mean() for o in model(x))
else:
    net = MiMPretrainNetwork(1, 2, **preset_kwargs(preset)).to(device)
    model = torch.compile(net, backend=backend) if mode == "compiled" else net
    crops = torch.randn(2, 1, *[patch * LevelConfig().crop_factor] * 3, device=device)
    def step(i):
        levels = build_levels(crops, LevelConfig(), torch.Generator().manual_seed(i))
        with amp:
            return mim_objective(model, net.alignment, levels, 16, (1, 1, 1), 0.1)["loss"]
times = []
for i in range(steps):
    start = time.perf_counter()
    step(i).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "graphs": counters["stats"]["unique_graphs"],
                  "graph_breaks": sum(counters["graph_break"].values()),
                  "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else 0,
                  "break_reasons": sorted({k.splitlines()[0] for k in counters["graph_break"]})[:5]}))
"""


def measure(arm: str, mode: str, args) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, arm, mode, args.preset, str(args.patch), str(args.steps),
                          args.device, args.backend], capture_output=True, text=True,
                         env=dict(os.environ, TORCHDYNAMO_VERBOSE="0"))
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="T")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--arms", nargs="+", choices=["finetune", "pretrain"], default=["finetune", "pretrain"])
    args = parser.parse_args()
    print(f"preset {args.preset}, patch {args.patch}^3, batch 2, {args.steps} steps, {args.device}, "
          f"backend {args.backend}\n")
    print("| arm | mode | first step (s) | median step after (s) | compiled / eager | graphs | graph breaks | "
          "recompiles |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for arm in args.arms:
        eager = None
        for mode in ("eager", "compiled"):
            result = measure(arm, mode, args)
            if "error" in result:
                print(f"| {arm} | {mode} | failed: {result['error']} | | | | | |", flush=True)
                continue
            median = statistics.median(result["times"][1:])
            eager = median if mode == "eager" else eager
            ratio = f"{median / eager:.2f}" if mode == "compiled" and eager else ""
            graphs = result["graphs"] if mode == "compiled" else ""
            breaks = result["graph_breaks"] if mode == "compiled" else ""
            recompiles = result.get("recompiles", "") if mode == "compiled" else ""
            print(f"| {arm} | {mode} | {result['times'][0]:.1f} | {median:.3f} | {ratio} | {graphs} | {breaks} | "
                  f"{recompiles} |", flush=True)
            if mode == "compiled" and result.get("break_reasons"):
                print(f"<!-- {arm} graph breaks: {'; '.join(result['break_reasons'])} -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
