"""Exact teachers (BOOT.md section 5): the true denoisers of known distributions, for tests and benchmarks.

A Gaussian mixture sum_k pi_k N(mu_k, s_k^2 I) has the exact denoiser
    f(x_t, t) = sum_k r_k [mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)],
    r_k ∝ pi_k N(x_t; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I),
and a finite data set {x_i} is the mixture with s_k = 0 and equal weights. No training, no error. The formulas hold for
any x_t = alpha_t x0 + sigma_t eps: variance preserving, flow matching and EDM schedules alike.
"""
import math

import torch

import boot


class MixtureTeacher:
    """f(x_t, t) for sum_k weights_k N(means_k, stds_k^2 I); x of shape (B, ...) is flattened to (B, D)."""

    def __init__(self, means, stds, weights, schedule: boot.Schedule, labels=None):
        self.means = torch.as_tensor(means, dtype=torch.float64).flatten(1)
        k = len(self.means)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        self.weights = torch.as_tensor(weights, dtype=torch.float64).expand(k).clone()
        self.weights /= self.weights.sum()
        self.labels = torch.arange(k) if labels is None else torch.as_tensor(labels)
        self.schedule = schedule
        self.shape = tuple(torch.as_tensor(means).shape[1:])
        self.finite = bool((self.stds == 0).all())  # a finite data set: the cheaper exact formula applies

    def __call__(self, x_t, t, cond=None):
        x = x_t.flatten(1).double()
        means, stds, weights = (v.to(x.device) for v in (self.means, self.stds, self.weights))
        alpha, sigma, _ = self.schedule.coefficients(t.double())
        alpha, sigma = alpha[:, None], sigma[:, None]
        # |x - alpha mu|^2 by a matmul: the (B, K, D) difference would not fit for data sets of images.
        dist = ((x * x).sum(1, keepdim=True) - 2 * alpha * x @ means.T + alpha ** 2 * (means * means).sum(1)).clamp(min=0)
        if self.finite:  # s_k = 0: r = softmax(log pi - |x - alpha x_i|^2 / (2 sigma^2)), f = sum_i r_i x_i
            x0 = torch.softmax(weights.log() - dist / (2 * sigma ** 2), dim=1) @ means
            return x0.to(x_t.dtype).reshape(x_t.shape)
        var = alpha ** 2 * stds ** 2 + sigma ** 2                       # (B, K)
        r = torch.softmax(weights.log() - 0.5 * x.shape[1] * var.log() - dist / (2 * var), dim=1)
        shrink = alpha * stds ** 2 / var                                # (B, K)
        x0 = r @ means + (r * shrink).sum(1, keepdim=True) * x - alpha * (r * shrink) @ means
        return x0.to(x_t.dtype).reshape(x_t.shape)

    def sample(self, n: int, generator=None):
        """n fresh draws from the true distribution and the label of the component each came from."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp, None] * noise
        return x.float().reshape(n, *self.shape), self.labels[comp]

    def nearest(self, x):
        """The index of the component whose mean is nearest to each row of x."""
        return torch.cdist(x.flatten(1).double().cpu(), self.means).argmin(1)

    def nearest_label(self, x):
        """The label of the component whose mean is nearest to each row of x."""
        return self.labels[self.nearest(x)]


def gaussian_signal(eps, t, *, mean: float, std: float, schedule: boot.Schedule):
    """y_t of the exact probability-flow trajectory for N(mean, std^2 I) from where the schedule's sampling starts
    (x_T = eps if variance preserving, else sigma_T eps: boot.start_signal), for any family: the ODE keeps
    z = (x_t - alpha_t mean) / sqrt(alpha_t^2 std^2 + sigma_t^2) constant. Where alpha_t = 0 (t = T of a flow or
    zero-terminal-SNR schedule) y_t is its limit, mean: any y_T gives the same x_T there."""
    a_T, s_T, _ = schedule.coefficients(torch.ones((), dtype=torch.float64))
    a, s, _ = schedule.coefficients(torch.as_tensor(t, dtype=torch.float64))
    a, s, e = boot._per_sample(a, eps), boot._per_sample(s, eps), eps.double()
    x_T = e if schedule.variance_preserving else s_T * e
    z = (x_T - a_T * mean) / math.sqrt(a_T ** 2 * std ** 2 + s_T ** 2)
    x_t = a * mean + torch.sqrt(a ** 2 * std ** 2 + s ** 2) * z
    return torch.where(a > 0, (x_t - s * e) / a, torch.full_like(x_t, mean)).to(eps.dtype)


# ----------------------------------------------------------------------------------------------------
# The 2-D toy teachers of train_toy.py and the benchmark, and the real-digits teacher.


def _circle(k: int, radius: float):
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def _checkerboard(n: int, generator):
    """n points spread over the 8 dark squares of a 4x4 board on [-2, 2]^2, labelled by square."""
    squares = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    label = torch.arange(n) % len(squares)
    corner = squares[label] - 2
    return corner + torch.rand(n, 2, generator=generator, dtype=torch.float64), label


def _spiral(n: int, generator):
    """n points on two interleaved spiral arms, labelled by arm."""
    label = torch.arange(n) % 2
    r = torch.rand(n, generator=generator, dtype=torch.float64).sqrt() * 2
    angle = 2.5 * math.pi * r / 2 + math.pi * label
    return torch.stack([r * angle.cos(), r * angle.sin()], dim=1), label


TOYS = ("mixture", "unequal", "checkerboard", "spiral")


def toy_teacher(name: str, schedule: boot.Schedule, points: int = 2048) -> MixtureTeacher:
    """mixture: 8 equal modes, radius 1.5, std 0.15 (BOOT.md's calibration teacher); unequal: 6 modes of
    unequal weight and width; checkerboard, spiral: finite sets of `points` points (exact finite-set teacher)."""
    gen = torch.Generator().manual_seed(0)  # the finite sets are part of the teacher: fixed
    if name == "mixture":
        return MixtureTeacher(_circle(8, 1.5), 0.15, 1.0, schedule)
    if name == "unequal":
        return MixtureTeacher(_circle(6, 1.5), [0.05, 0.1, 0.2, 0.05, 0.1, 0.3], [1, 2, 3, 4, 5, 6], schedule)
    if name in ("checkerboard", "spiral"):
        x, label = (_checkerboard if name == "checkerboard" else _spiral)(points, gen)
        return MixtureTeacher(x, 0.0, 1.0, schedule, labels=label)
    raise ValueError(f"unknown toy data {name!r}; choose one of {', '.join(TOYS)}")


def digits_teacher(schedule: boot.Schedule) -> MixtureTeacher:
    """The exact teacher of scikit-learn's 1,797 real 8x8 handwritten digits, pixels in [-1, 1], shape (1, 8, 8)."""
    from sklearn.datasets import load_digits  # the images ship inside the package: no download
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float64) / 8 - 1
    return MixtureTeacher(images[:, None], 0.0, 1.0, schedule, labels=torch.as_tensor(digits.target))
