"""metrics.py: how fidelity and speed are measured (BOOT.md section 6), shared by train_toy.py and bench.py.

- rmse: per-sample RMSE to the teacher's converged DDIM from the same noise, sqrt(mean_i |x_i - ref_i|^2)
  (per_pixel=True divides by the dimension: the per-pixel RMSE of images).
- effective_nfe: the k at which the teacher's own DDIM-k curve reaches a given error, log-interpolated.
- energy_distance: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely), 0 iff the distributions agree.
- mode_shares: the share of samples nearest each mode, against the mode's weight.
"""
import math
import time

import torch

import boot

DDIM_KS = (1, 2, 4, 8, 16, 32, 64)


def rmse(x, ref, per_pixel=False) -> float:
    err = (x.double() - ref.double()).flatten(1).pow(2).sum(1).mean()
    return math.sqrt(err.item() / (x[0].numel() if per_pixel else 1))


def ddim_curve(teacher, eps, reference, *, schedule, ks=DDIM_KS, cond=None, per_pixel=False, batch=None):
    """{k: rmse of the teacher's DDIM-k to the reference}, for the same noise."""
    return {k: rmse(batched(lambda e: boot.ddim_sample(teacher, e, schedule=schedule, steps=k, cond=cond), eps, batch),
                    reference, per_pixel) for k in ks}


def batched(fn, x, batch=None):
    """fn over x in chunks of `batch` rows (all at once when None)."""
    if batch is None or len(x) <= batch:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in x.split(batch)])


def effective_nfe(error: float, curve: dict) -> float:
    """log k at `error` on the piecewise log-log teacher curve; extrapolated from the end segments outside it."""
    ks = sorted(curve)
    logk = [math.log(k) for k in ks]
    loge = [math.log(max(curve[k], 1e-300)) for k in ks]
    e = math.log(max(error, 1e-300))
    seg = next((i for i in range(len(ks) - 1) if loge[i + 1] <= e), len(ks) - 2)
    if e >= loge[0]:
        seg = 0
    slope = (logk[seg + 1] - logk[seg]) / (loge[seg + 1] - loge[seg]) if loge[seg + 1] != loge[seg] else 0.0
    return math.exp(logk[seg] + (e - loge[seg]) * slope)


def energy_distance(x, y, max_rows=4096) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| over (up to max_rows of) the rows of x and y (V-statistics)."""
    x, y = x.flatten(1)[:max_rows].double(), y.flatten(1)[:max_rows].double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


def mode_shares(labels, num_modes: int):
    """The share of samples given each mode's label."""
    return (torch.bincount(labels.long().cpu(), minlength=num_modes).double() / len(labels)).tolist()


def samples_per_second(fn, eps, repeats=3) -> float:
    """Best of `repeats` timed runs of fn(eps), after one warm-up; synchronises CUDA."""
    sync = torch.cuda.synchronize if eps.is_cuda else (lambda: None)
    fn(eps)
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn(eps)
        sync()
        best = min(best, time.perf_counter() - start)
    return len(eps) / best
