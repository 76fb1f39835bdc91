"""bench/ablate_toy.py: the levers of a default recipe, one at a time, as train_toy.py runs them.

    python bench/ablate_toy.py                  # the 2-D mixture: about 15 minutes on 2 CPU cores; the README's table
    python bench/ablate_toy.py --data digits    # the real-digits teacher: about 30 minutes
    python bench/ablate_toy.py --data mnist16   # the learned MNIST teacher (teachers/mnist16), 600 steps a row: 45 minutes

Each row is `python train_toy.py --data DATA` (mnist16: `--teacher teachers/mnist16`) with the default flags but
for the change it names, written to runs/ablate-DATA/<row>; the table reads their metrics.json. Runs go two at a
time, one thread each.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: train_toy.py and teachers/

ROWS_2D = {
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

ROWS_DIGITS = {
    "default": [],
    "no target network (--ema 0)": ["--ema", "0"],
    "slower target network (--ema 0.999)": ["--ema", "0.999"],
    "uniform grid (--spacing t)": ["--spacing", "t"],
    "grid uniform in lambda (--spacing lambda)": ["--spacing", "lambda"],
    "N = 8 (--bootstrap-steps 8)": ["--bootstrap-steps", "8"],
    "N = 32 (--bootstrap-steps 32)": ["--bootstrap-steps", "32"],
    "learning rate 5e-3": ["--lr", "5e-3"],
    "learning rate 1e-3": ["--lr", "1e-3"],
    "wider, shallower MLP (--width 1024 --depth 4)": ["--width", "1024", "--depth", "4"],
}
# The learned teacher: a tenth of the recipe's steps a row (a network teacher costs what it costs), figures on
# train_toy's CPU defaults (256 noises, DDIM-64) with the teacher's judge.
ROWS_MNIST = {
    "default (no target network)": [],
    "EMA target network (--ema 0.99)": ["--ema", "0.99"],
    "EMA target network, first-order teacher step (--ema 0.99 --order 1)": ["--ema", "0.99", "--order", "1"],
    "EMA target network, uniform grid (--ema 0.99 --spacing t)": ["--ema", "0.99", "--spacing", "t"],
    "N = 8 (--bootstrap-steps 8)": ["--bootstrap-steps", "8"],
    "learning rate 5e-4": ["--lr", "5e-4"],
}
# Digits: the finite-set teacher costs batch x 1,797 images a call, so its figures use fewer noises.
DATA = {"mixture": (ROWS_2D, []), "digits": (ROWS_DIGITS, ["--eval-samples", "512", "--reference-steps", "1024"]),
        "mnist16": (ROWS_MNIST, ["--steps", "600"])}


def main():
    parser = argparse.ArgumentParser(description="the levers of a default recipe, one at a time")
    parser.add_argument("--data", choices=list(DATA), default="mixture", help="the exact teacher whose recipe to ablate")
    data = parser.parse_args().data
    rows, extra = DATA[data]
    root = Path(f"runs/ablate-{data}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    jobs, results = list(rows.items()), {}
    while jobs:
        pair, jobs = jobs[:2], jobs[2:]
        started = {}
        for name, flags in pair:
            out = root / str(list(rows).index(name))
            teacher = ["--teacher", str(ROOT / "teachers" / data)] if data == "mnist16" else ["--data", data]
            cmd = [sys.executable, str(ROOT / "train_toy.py"), *teacher, "--out", str(out), "--overwrite", *extra, *flags]
            started[name] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                             time.perf_counter(), out)
        for name, (proc, start, out) in started.items():
            if proc.wait():
                sys.exit(f"error: the run '{name}' failed; rerun it by hand to see why")
            results[name] = (json.loads((out / "metrics.json").read_text()), time.perf_counter() - start)
            print(f"done: {name}", file=sys.stderr)
    if data == "mnist16":
        return print_learned(results)
    print("| change from the default | student RMSE | effective NFE | energy distance (student / teacher) | run time |")
    print("|---|---|---|---|---|")
    for name, (m, seconds) in results.items():
        ed = m["energy_distance"]
        print(f"| {name} | {m['student_rmse']:.4f} | {m['effective_nfe']:.1f} | "
              f"{ed['student']:.4f} / {ed['teacher']:.4f} | {seconds:.0f} s |")


def print_learned(results):
    """A learned teacher's table: fidelity to its DDIM-64, and the judge's FD and class shares."""
    print("| change from the default | student RMSE | effective NFE | FD (student / teacher DDIM-8) | class shares, "
          "min - max | run time |")
    print("|---|---|---|---|---|---|")
    for name, (m, seconds) in results.items():
        fd, shares = m["judge"]["fd"], m["judge"]["class_share"]["student"]
        print(f"| {name} | {m['student_rmse']:.4f} | {m['effective_nfe']:.1f} | {fd['student']:.1f} / "
              f"{fd['teacher_ddim_8']:.1f} | {min(shares):.3f} - {max(shares):.3f} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
