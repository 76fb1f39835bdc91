"""bootkit/metrics.py: how fidelity and speed are measured (BOOT.md section 6), by the scripts and the benchmark.

- rmse: per-sample RMSE to the teacher's converged DDIM from the same noise, sqrt(mean_i |x_i - ref_i|^2)
  (per_pixel=True divides by the dimension: the per-pixel RMSE of images).
- effective_nfe: the k at which the teacher's own DDIM-k curve reaches a given error, log-interpolated.
- energy_distance: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely), 0 iff the distributions agree.
- mode_shares: the share of samples nearest each mode, against the mode's weight.
- frechet_distance: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) between two Gaussians, in float64.
- Judge, save_judge, load_judge, judge_features, judge_classes: the digit classifier teachers/train_teacher.py trains; the FD of a set of
  images is that distance between the judge's penultimate features of the set and of held-out digits.
"""
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DDIM_KS = (1, 2, 4, 8, 16, 32, 64)


def rmse(x, ref, per_pixel=False) -> float:
    err = (x.double() - ref.double()).flatten(1).pow(2).sum(1).mean()
    return math.sqrt(err.item() / (x[0].numel() if per_pixel else 1))


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


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), in float64. tr (C1 C2)^1/2 is taken as
    tr (C1^1/2 C2 C1^1/2)^1/2, a symmetric matrix: two eigendecompositions, no non-symmetric square root."""
    mu1, cov1, mu2, cov2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, cov1, mu2, cov2))
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt).item()


def _sqrt_psd(c):
    """The symmetric square root of a covariance matrix (eigenvalues rounded below 0 clipped to 0)."""
    w, v = torch.linalg.eigh((c + c.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def feature_stats(features):
    """(mean, covariance) of rows of features, float64; the unbiased covariance."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


class Judge(torch.nn.Module):
    """A small CNN digit classifier for images in [-1, 1]; `features` (its penultimate layer, after ReLU) is
    what the Frechet distance compares."""

    def __init__(self, *, size=16, width=32, features=128, classes=10):
        super().__init__()
        self.config = dict(size=size, width=width, features=features, classes=classes)
        conv = lambda i, o: [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(
            *conv(1, width), *conv(width, width), torch.nn.MaxPool2d(2),
            *conv(width, 2 * width), *conv(2 * width, 2 * width), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(2 * width * (size // 4) ** 2, features), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(features, classes))

    def forward(self, x):
        return self.head(self.features(x))


def load_judge(folder, device="cpu"):
    """(judge, reference mean, reference covariance) from a judge folder: config.json,
    model.safetensors and reference.safetensors (the held-out digits' feature statistics), as save_judge wrote."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    judge = Judge(**{k: config[k] for k in ("size", "width", "features", "classes")})
    judge.load_state_dict(load_file(folder / "model.safetensors"))
    reference = load_file(folder / "reference.safetensors")
    return judge.to(device).eval().requires_grad_(False), reference["mean"], reference["cov"]


def save_judge(folder, judge, held_out, held_out_labels, *, source: str = "held-out images") -> float:
    """A judge folder: weights, config (with the accuracy on held_out) and held_out's feature statistics, the
    reference of every FD; source says what held_out is. Returns the accuracy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    accuracy = judge_classes(judge, held_out).eq(held_out_labels.cpu()).double().mean().item()
    mean, cov = feature_stats(judge_features(judge, held_out))
    save_file({k: v.contiguous().cpu() for k, v in judge.state_dict().items()}, folder / "model.safetensors")
    save_file({"mean": mean, "cov": cov}, folder / "reference.safetensors")
    config = {**judge.config, "held_out_accuracy": accuracy, "reference": source}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return accuracy


@torch.no_grad()
def judge_features(judge, images, batch=256):
    """The judge's features of images (clamped to [-1, 1], as a picture of them would be), float64 on the CPU."""
    return batched(lambda x: judge.features(x.clamp(-1, 1)), images, batch).double().cpu()


@torch.no_grad()
def judge_classes(judge, images, batch=256):
    """The class the judge gives each image."""
    return batched(lambda x: judge(x.clamp(-1, 1)).argmax(1), images, batch).cpu()


def judge_fd(judge, images, ref_mean, ref_cov) -> float:
    """The Frechet distance of images to the reference in the judge's features."""
    return frechet_distance(*feature_stats(judge_features(judge, images)), ref_mean, ref_cov)


def judge_prompted(judge, images, digits, ref_mean, ref_cov) -> dict:
    """A text-to-image digit sampler's figures: the share of images the judge reads as the digit their prompt names
    (digits, on the CPU), and their FD to the reference."""
    return {"accuracy": judge_classes(judge, images).eq(digits).double().mean().item(),
            "fd": judge_fd(judge, images, ref_mean, ref_cov)}
