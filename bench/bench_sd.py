"""bench/bench_sd.py: one BOOT step at Stable-Diffusion-1.5 or SDXL shape against the sum of its parts
(bench/sd_step.py).

    python bench/bench_sd.py                        # batch 8, 64x64 latents, bf16 autocast, gradient checkpointing
    python bench/bench_sd.py --shape sdxl --batch 4 --lora-rank 64    # SDXL base, a LoRA student: one copy
    python bench/bench_sd.py --tiny --device cpu    # a CPU-sized UNet: checks the script, not the figures
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's root: boot.py and bootkit/

from bootkit import runtime, sd
from sd_step import REFERENCE, run, table


@runtime.cli
def main(argv=None):
    p = runtime.ArgumentParser(description="Time one BOOT step at Stable-Diffusion-1.5 shape (random weights).")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--batch", type=runtime.positive(), default=8, help="examples per step")
    p.add_argument("--tiny", action="store_true", help="a CPU-sized UNet of the shape instead of the real one")
    p.add_argument("--shape", choices=("sd15", "sdxl"), default="sd15", help="the UNet's shape: SD 1.5 (860 M) or SDXL "
                   "base (2.6 B, 128x128 latents)")
    p.add_argument("--lora-rank", type=runtime.positive(), help="a LoRA student of this rank on the teacher's own UNet "
                   "(train_sd --lora-rank) instead of a full copy")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute the student's activations in backward (default on)")
    p.add_argument("--reps", type=runtime.positive(), default=5, help="timed runs of each part (median), warm-up apart")
    p.add_argument("--dtype", choices=sd.DTYPES, default="bf16", help="teacher weights and student autocast")
    args = p.parse_args(argv)
    d = runtime.setup(args.device)
    dtype = sd.DTYPES[args.dtype]
    print(table(run(d.device, args.batch, args.tiny, args.gradient_checkpointing, args.reps, dtype, args.shape,
                    args.lora_rank or 0)))
    if not args.tiny:
        print(f"\nreference ({REFERENCE})")


if __name__ == "__main__":
    main()
