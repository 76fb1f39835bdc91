"""ablate_toy.py: the levers of the default 2-D recipe, one at a time, as train_toy.py runs them.

    python ablate_toy.py                  # about 15 minutes on 2 CPU cores; prints the README's table

Each row is `python train_toy.py` with the default flags but for the change it names, written to
runs/ablate/<row>; the table reads their metrics.json. Runs go two at a time, one thread each.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "default": [],
    "no target network (--ema 0)": ["--ema", "0"],
    "first-order teacher step (--order 1)": ["--order", "1"],
    "uniform grid (--spacing t)": ["--spacing", "t"],
    "N = 16 (--bootstrap-steps 16)": ["--bootstrap-steps", "16"],
    "half the learning rate (--lr 5e-3)": ["--lr", "5e-3"],
    "two teacher steps a target (--jump 2)": ["--jump", "2"],
    "constant loss weight (--weighting constant)": ["--weighting", "constant"],
    "paper-style boundary loss (--boundary loss)": ["--boundary", "loss"],
    "BOOT.md's student, MLP 3x256 (--width 256 --depth 3)": ["--width", "256", "--depth", "3"],
    "the plain version of BOOT.md section 7": ["--spacing", "t", "--order", "1", "--ema", "0", "--width", "256",
                                               "--depth", "3", "--bootstrap-steps", "64", "--lr", "1e-3", "--warmup", "0"],
}


def main():
    root = Path("runs/ablate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    jobs, results = list(ROWS.items()), {}
    while jobs:
        pair, jobs = jobs[:2], jobs[2:]
        started = {}
        for name, flags in pair:
            out = root / str(list(ROWS).index(name))
            cmd = [sys.executable, "train_toy.py", "--out", str(out), "--overwrite", *flags]
            started[name] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                             time.perf_counter(), out)
        for name, (proc, start, out) in started.items():
            if proc.wait():
                sys.exit(f"error: the run '{name}' failed; rerun it by hand to see why")
            results[name] = (json.loads((out / "metrics.json").read_text()), time.perf_counter() - start)
            print(f"done: {name}", file=sys.stderr)
    print("| change from the default | student RMSE | effective NFE | energy distance (student / teacher) | run time |")
    print("|---|---|---|---|---|")
    for name, (m, seconds) in results.items():
        ed = m["energy_distance"]
        print(f"| {name} | {m['student_rmse']:.4f} | {m['effective_nfe']:.1f} | "
              f"{ed['student']:.4f} / {ed['teacher']:.4f} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
