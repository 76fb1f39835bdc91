"""boot.py: BOOT, data-free distillation of a diffusion model into a one-step generator.

After Gu, Zhai, Zhang, Liu and Susskind, "BOOT: Data-free Distillation of Denoising Diffusion Models with
Bootstrapping" (arXiv 2306.05544, ICML 2024). Needs only torch and einops; copy it into your project.

A student g(eps, t) learns the signal y_t = (x_t - sigma_t eps) / alpha_t of the teacher's deterministic
DDIM trajectory from x_T = eps. It is trained from noise alone: one teacher DDIM step from the student's
own y_t is the stop-gradient target for the student at the previous grid time s < t. At t = 0 the signal
is the sample, so generating is one network call.

    schedule = Schedule.cosine()
    grid = time_grid(schedule, 64)
    teacher = denoiser(my_eps_net, schedule, prediction="epsilon")    # or any (x_t, t, cond) -> x0
    student = MLPStudent(dim=2)
    loss, logs = boot_loss(student, teacher, torch.randn(256, 2), schedule=schedule, grid=grid)
    x0 = sample_student(student, torch.randn(16, 2))                   # one call

Public names: Schedule, time_grid, to_x0, from_x0, ddim_step, signal_delta, signal_step, start_signal, teacher_step,
denoiser, guided, MLPStudent, UNetStudent, TeacherStudent, BootConfig, bootstrap_target, boot_loss, random_times,
noised, corrector_loss, fake_loss, sample_student, fixed_point, ddim_sample, sample_any_t.

Notation (code -> paper):
    t in [0, 1]        time; T = 1 is pure noise, 0 the data (alpha_0 = 1, sigma_0 = 0); the student's t
    alpha, sigma       x_t = alpha_t x0 + sigma_t eps: variance preserving (alpha^2 + sigma^2 = 1), flow matching
                       (alpha + sigma = 1, alpha_T = 0) or EDM (alpha = 1, sigma_T = sigma_max)
    lam                lambda_t = log(alpha_t / sigma_t): half the log-SNR, DECREASING in t.
                       The paper's lambda is the negative of ours; only differences of lam are used.
    eps                the student's input noise; the teacher's trajectory starts at x_T = eps if variance
                       preserving (diffusers' DDIM), else at x_T = sigma_T eps (flow: eps; EDM: sigma_max eps)
    y                  the signal y_t; teacher(x_t, t, cond) = f(x_t, t, c) = x0_hat; student = g
    delta              1 - exp(lam_t - lam_s), the weight of one DDIM step in signal space, in (0, 1]
    grid               T = t_N > ... > t_0 = 0, stored ascending: grid[k] = t_k
"""
import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

Teacher = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _per_sample(a, x):
    """Broadcast a per-sample coefficient (float, scalar or shape (B,)) against x of shape (B, ...)."""
    if not torch.is_tensor(a) or a.ndim == 0:
        return a
    a = a.to(x.dtype) if a.is_floating_point() else a
    return a.reshape(-1, *([1] * (x.ndim - 1)))


# ----------------------------------------------------------------------------------------------------
# 1. Schedules on continuous time t in [0, 1], computed in float64.


class Schedule:
    """x_t = alpha_t x0 + sigma_t eps with alpha_0 = 1, sigma_0 = 0, lam = log(alpha / sigma). Variance preserving
    from log alpha_t^2 (sigma = sqrt(1 - alpha^2)), or any other family from alpha_sigma(t) -> (alpha_t, sigma_t)."""

    def __init__(self, log_alpha2: Optional[Callable] = None, *, name: str, train_steps: int = 0, alpha_sigma=None):
        self.log_alpha2, self.alpha_sigma, self.name = log_alpha2, alpha_sigma, name
        self.variance_preserving = alpha_sigma is None
        self.train_steps = train_steps  # > 0 for a discrete teacher: it may only be called at t = (i + 1) / n

    @classmethod
    def cosine(cls, offset: float = 0.008):
        """alpha_t = cos(pi/2 (t + s) / (1 + s)) / cos(pi/2 s / (1 + s)) (Nichol & Dhariwal); alpha_1 = 0."""
        def log_alpha2(t):
            # cos(pi/2 (t+s)/(1+s)) written as sin(pi/2 (1-t)/(1+s)), so that alpha is exactly 0 at t = 1.
            return 2 * (torch.log(torch.sin(math.pi / 2 * (1 - t) / (1 + offset)))
                        - math.log(math.cos(math.pi / 2 * offset / (1 + offset))))
        return cls(log_alpha2, name="cosine")

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0):
        """log alpha_t^2 = -(beta_min t + (beta_max - beta_min) t^2 / 2) (continuous VP-SDE, Song et al.)."""
        return cls(lambda t: -(beta_min * t + 0.5 * (beta_max - beta_min) * t * t), name="linear")

    @classmethod
    def discrete(cls, alphas_cumprod):
        """alpha^2 at t = (i + 1) / n is alphas_cumprod[i]; t = 0 is the clean sample (alpha = 1).

        This is diffusers' "trailing" spacing with set_alpha_to_one: a grid of t = k / N, N dividing n,
        calls the teacher at timesteps k n / N - 1. Off-grid t interpolates log alpha^2 linearly. The last
        alphas_cumprod may be 0 (zero terminal SNR: alpha_T = 0, lambda_T = -inf)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        if ac.ndim != 1 or len(ac) < 2 or not (ac[:-1] > 0).all() or not (ac[-1] >= 0) or not (ac <= 1).all() \
                or not (ac[1:] < ac[:-1]).all():
            raise ValueError("alphas_cumprod must be a 1-D, strictly decreasing sequence in (0, 1] (the last may be 0)")
        n, tables = len(ac), {}
        table = torch.cat([ac.new_zeros(1), ac.log()])

        def log_alpha2(t):
            if t.device not in tables:  # one copy per device, made once
                tables[t.device] = table.to(t.device)
            tab = tables[t.device]
            pos = (t * n).clamp(0, n)
            i = pos.floor().clamp(max=n - 1)
            w = pos - i
            i = i.long()
            # At a timestep itself the table value, never 0 * log(0) = nan next to a zero terminal alpha.
            return torch.where(w == 0, tab[i], torch.where(w == 1, tab[i + 1], tab[i] * (1 - w) + tab[i + 1] * w))
        return cls(log_alpha2, name=f"discrete{n}", train_steps=n)

    @classmethod
    def flow(cls, shift: float = 1.0):
        """Rectified flow x_t = (1 - sigma_t) x0 + sigma_t eps with SD3's shift, sigma_t = shift t / (1 + (shift - 1) t),
        written with the denominator shift t + (1 - t) so that both ends are exact without rounding."""
        if not shift > 0:  # shift 0 makes 0 / 0 at t = 1, a negative one alpha > 1
            raise ValueError(f"shift must be positive, got {shift}")

        def alpha_sigma(t):
            d = shift * t + (1 - t)
            return (1 - t) / d, shift * t / d
        return cls(alpha_sigma=alpha_sigma, name=f"flow{shift:g}")

    @classmethod
    def edm(cls, sigma_max: float = 80.0, rho: float = 7.0):
        """EDM (variance exploding): x_t = x0 + sigma_t eps, sigma_t = sigma_max t^rho, Karras' rho-spacing continued
        to sigma_0 = 0; Karras' sampler from sigma_min is uniform in t from (sigma_min / sigma_max)^(1 / rho) to 1."""
        for key, value in (("sigma_max", sigma_max), ("rho", rho)):  # else sigma is not increasing from 0 to sigma_max
            if not value > 0:
                raise ValueError(f"{key} must be positive, got {value}")
        return cls(alpha_sigma=lambda t: (torch.ones_like(t), sigma_max * t ** rho), name=f"edm{sigma_max:g}")

    def coefficients(self, t: torch.Tensor):
        """(alpha_t, sigma_t, lam_t), float64 inside; float64 out for float64 t, else float32.

        The guard makes the ends exact on any libm: alpha_0 = 1, sigma_0 = 0, lam_0 = +inf by definition,
        and log alpha^2 <= 0 elsewhere, so sigma^2 = 1 - alpha^2 can never round below 0 (a cosine whose sine
        rounds up gave log alpha_0^2 = +2.7e-20 and a NaN sigma on some CPUs); other families: alpha, sigma >= 0."""
        t = torch.as_tensor(t)
        t64 = t.double().clamp(0, 1)
        out = torch.float64 if t.dtype == torch.float64 else torch.float32
        if self.alpha_sigma is not None:
            alpha, sigma = self.alpha_sigma(t64)
            alpha, sigma = torch.where(t64 == 0, 1.0, alpha.clamp(min=0)), torch.where(t64 == 0, 0.0, sigma.clamp(min=0))
            return alpha.to(out), sigma.to(out), (alpha.log() - sigma.log()).to(out)
        la2 = torch.where(t64 == 0, 0.0, self.log_alpha2(t64).clamp(max=0))
        neg = 0.0 - torch.expm1(la2)  # sigma^2, accurate as alpha -> 1 (0.0 - : +0, not -0, at t = 0)
        lam = 0.5 * (la2 - torch.log(neg))
        return torch.exp(0.5 * la2).to(out), torch.sqrt(neg).to(out), lam.to(out)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input of a network trained on this schedule: t (adapters map it on), or the timestep t n - 1 if discrete."""
        return t * self.train_steps - 1 if self.train_steps else t

    def teacher_time(self, t: torch.Tensor) -> torch.Tensor:
        """network_time where the teacher was trained: the integer timestep (int64) if discrete, else float32 t."""
        return self.network_time(t.double()).round().long() if self.train_steps else t.float()

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        """Round t to the nearest time the teacher can be called at (identity when continuous)."""
        return (t * self.train_steps).round() / self.train_steps if self.train_steps else t

    def time_of(self, lam: torch.Tensor, lo: float = 0.0) -> torch.Tensor:
        """The float64 t in [lo, 1] where lambda_t = lam (bisection: lambda decreases in t), unsnapped."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.full_like(lam, lo), torch.ones_like(lam)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.coefficients(mid)[2] > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2


SPACINGS = ("t", "quadratic", "lambda")


def time_grid(schedule: Schedule, steps: int, *, spacing: str = "t") -> torch.Tensor:
    """Float64 times 0 = t_0 < t_1 < ... < t_N = 1, uniform in t, or t_k = (k / N)^2 ("quadratic", DDIM's
    "quad": fine near the data, where a step's error is largest), or t_1..t_N uniform in lambda."""
    if steps < 1 or (schedule.train_steps and steps > schedule.train_steps):
        raise ValueError(f"grid steps must be at least 1{' and at most %d' % schedule.train_steps if schedule.train_steps else ''}, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown grid spacing {spacing!r}; use one of {SPACINGS}")
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if spacing == "quadratic":
        t = t ** 2
    if spacing == "lambda" and steps > 1:
        # t_1 and t_N as on the uniform grid, lambda uniform in between (clamped where alpha_T = 0 makes it
        # infinite).
        lam_hi, lam_lo = schedule.coefficients(t[[1, -1]])[2].clamp(min=-20.0).tolist()
        targets = torch.linspace(lam_hi, lam_lo, steps, dtype=torch.float64)[1:-1]
        t = torch.cat([t[:2], schedule.time_of(targets, lo=float(t[1])), t[-1:]])
    t = schedule.snap(t)
    if not (t[1:] > t[:-1]).all():
        raise ValueError(f"{steps} {spacing}-spaced steps collide on the teacher's {schedule.train_steps} timesteps")
    return t


# ----------------------------------------------------------------------------------------------------
# 2. Parameterizations: everything a network may predict, converted to x0 here and only here.

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")  # diffusers' names
# An EDM network is a "sample" teacher once preconditioned (D = c_skip x + c_out F(c_in x)): boot_diffusers does that.


def to_x0(pred, *, kind: str, x_t, alpha, sigma):
    """eps: x0 = (x_t - sigma eps) / alpha;  v (variance preserving): x0 = alpha x_t - sigma v;  sample: x0 = pred;
    flow, the velocity v = eps - x0: x0 = (x_t - sigma v) / (alpha + sigma), x_t - sigma v for flow matching."""
    if kind == "epsilon":
        return (x_t - sigma * pred) / alpha
    if kind == "v_prediction":
        return alpha * x_t - sigma * pred
    if kind == "sample":
        return pred
    if kind == "flow_prediction":
        return (x_t - sigma * pred) / (alpha + sigma)
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTIONS}")


def from_x0(x0, *, kind: str, x_t, alpha, sigma):
    """The inverse of to_x0: eps = (x_t - alpha x0) / sigma;  v = alpha eps - sigma x0;  flow: v = eps - x0."""
    if kind == "epsilon":
        return (x_t - alpha * x0) / sigma
    if kind == "v_prediction":
        return alpha * (x_t - alpha * x0) / sigma - sigma * x0
    if kind == "sample":
        return x0
    if kind == "flow_prediction":
        return (x_t - alpha * x0) / sigma - x0
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTIONS}")


# ----------------------------------------------------------------------------------------------------
# 3. The DDIM step (eta = 0), in x-space and in signal space.


def ddim_step(*, x_t, x0, alpha_t, sigma_t, alpha_s, sigma_s):
    """x_s = alpha_s x0 + sigma_s eps_hat, with eps_hat = (x_t - alpha_t x0) / sigma_t."""
    eps_hat = (x_t - alpha_t * x0) / sigma_t
    return alpha_s * x0 + sigma_s * eps_hat


def signal_delta(*, lam_t, lam_s):
    """delta = 1 - exp(lam_t - lam_s) = 1 - alpha_t sigma_s / (sigma_t alpha_s); 1 when s = 0 or alpha_t = 0."""
    lam_t, lam_s = (v if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64) for v in (lam_t, lam_s))
    return -torch.expm1(lam_t - lam_s)


def signal_step(*, y_t, x0, delta):
    """y_s = y_t + delta (x0 - y_t): the DDIM step for the signal of a trajectory with fixed eps."""
    return y_t + delta * (x0 - y_t)


def start_signal(eps, *, alpha_T, sigma_T, variance_preserving: bool = True):
    """y_T = (x_T - sigma_T eps) / alpha_T where sampling starts: x_T = eps if variance preserving, written
    alpha_T / (1 + sigma_T) eps (0 at alpha_T = 0); x_T = sigma_T eps otherwise (flow, EDM), so y_T = 0."""
    return alpha_T / (1 + sigma_T) * eps if variance_preserving else torch.zeros_like(eps)


def _start(schedule, eps, alpha, sigma):
    """start_signal of the schedule's family, from (alpha, sigma) on a grid that ends at T."""
    return start_signal(eps, alpha_T=alpha[-1].to(eps.dtype), sigma_T=sigma[-1].to(eps.dtype),
                        variance_preserving=schedule.variance_preserving)


# ----------------------------------------------------------------------------------------------------
# 4. The teacher: any callable (x_t, t, cond) -> x0_hat. Adapters for eps/v networks and guidance.


def _check_prediction(prediction: str, schedule: Schedule):
    """What denoiser and TeacherStudent both refuse: an unknown prediction, or v off a variance-preserving schedule."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
    if prediction == "v_prediction" and not schedule.variance_preserving:
        raise ValueError(f"v_prediction is alpha eps - sigma x0 of a variance-preserving schedule, not of {schedule.name}")


def denoiser(net, schedule: Schedule, *, prediction: str) -> Teacher:
    """f(x_t, t, c) = to_x0(net(x_t, teacher_time(t), c)): wraps a network that predicts eps, v, x0 or a velocity."""
    _check_prediction(prediction, schedule)
    if prediction == "epsilon" and schedule.coefficients(torch.ones(1))[0].item() == 0:
        raise ValueError("an eps-prediction teacher is undefined at alpha_T = 0; use a schedule with alpha_T > 0")

    def teacher(x_t, t, cond=None):
        alpha, sigma, _ = schedule.coefficients(schedule.snap(t.double()))
        pred = net(x_t, schedule.teacher_time(t), cond)
        return to_x0(pred.to(x_t.dtype), kind=prediction, x_t=x_t,
                     alpha=_per_sample(alpha, x_t), sigma=_per_sample(sigma, x_t))
    return teacher


def guided(teacher: Teacher, *, scale, null_cond: torch.Tensor) -> Teacher:
    """f_w = f(x, t, null) + w (f(x, t, c) - f(x, t, null)) (diffusers' CFG; w = 1 is the conditional
    teacher), both branches in one batched call. w is a float or a per-sample tensor of shape (B,)."""
    def teacher_w(x_t, t, cond):
        null = null_cond.expand_as(cond)
        both = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, cond]))
        f_null, f_cond = both.chunk(2)
        return f_null + _per_sample(scale, x_t) * (f_cond - f_null)
    return teacher_w


# ----------------------------------------------------------------------------------------------------
# 5. Students: g(eps, t[, cond]) -> y_t. Any network with that signature works.


def time_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of 1000 t (the DDPM convention), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPStudent(nn.Module):
    """For low-dimensional data: y = MLP([eps, emb(t), cond]) with residual SiLU blocks."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, cond_dim: int = 0, emb_dim: int = 64):
        super().__init__()
        self.emb_dim = emb_dim
        self.inp = nn.Linear(dim + emb_dim + cond_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(depth - 1))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))

    def forward(self, eps, t, cond=None):
        h = [eps, time_embedding(t, self.emb_dim).to(eps.dtype)] + ([cond] if cond is not None else [])
        h = self.inp(torch.cat(h, dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(32, c_in // 4) or 1, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(32, c_out // 4) or 1, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + rearrange(self.emb(F.silu(emb)), "b c -> b c 1 1")
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class UNetStudent(nn.Module):
    """For images: a small UNet, time (and optional class/text vector) added to every block's features."""

    def __init__(self, channels: int = 3, base: int = 64, mults=(1, 2, 2), cond_dim: int = 0):
        super().__init__()
        emb = 4 * base
        self.base, self.levels = base, len(mults)
        self.time = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond = nn.Linear(cond_dim, emb) if cond_dim else None
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in mults]
        self.down = nn.ModuleList(ResBlock(c_prev, c, emb) for c_prev, c in zip([base] + widths[:-1], widths))
        self.pool = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in widths[:-1])
        self.mid = ResBlock(widths[-1], widths[-1], emb)
        self.up = nn.ModuleList(ResBlock(2 * c, c_next, emb) for c, c_next in zip(widths[::-1], widths[::-1][1:] + [base]))
        self.unpool = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in widths[::-1][1:])
        self.out = nn.Sequential(nn.GroupNorm(min(32, base // 4) or 1, base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1))

    def forward(self, eps, t, cond=None):
        if eps.shape[-1] % 2 ** (self.levels - 1) or eps.shape[-2] % 2 ** (self.levels - 1):
            raise ValueError(f"image size {tuple(eps.shape[-2:])} must be divisible by {2 ** (self.levels - 1)}")
        emb = self.time(time_embedding(t, self.base).to(eps.dtype))
        if self.cond is not None:
            emb = emb + self.cond(cond)
        h, skips = self.inp(eps), []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.unpool):
                h = self.unpool[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)


class TeacherStudent(nn.Module):
    """A student that starts from the teacher's network: it reads eps in place of x_t, and its prediction becomes a
    signal at the FIXED coefficients of one time t_a, in float32: g(eps, t, c) = to_x0(net(eps, network_time(t), c),
    x_t = eps, alpha_a, sigma_a). net(x, time, cond) returns the prediction (wrap diffusers' `.sample`).
    - anchor=1 (t_a = T; the paper's recipe for text-to-image, train_sd.py): net is the teacher's network, so
      g(eps, T) = f(eps, T) at initialisation. An eps-prediction's error is multiplied by sigma_T / alpha_T
      (14.6 for SD 1.5, 157 for 1,000 linear betas), and g(eps, t < T) starts wherever the teacher, asked about
      pure noise at a small time, lands (RMSE 29 per pixel on a 16x16 MNIST teacher).
    - anchor=t_a < 1: net is the teacher's network read at t_a whatever t, with t entering through an extra input
      that starts at zero (the scripts add a zero-initialised time embedding), so g(eps, t) = f(eps, t_a) at
      initialisation. At lambda = 0 (anchor=schedule.time_of(0)) the conversion does not amplify: its gain is
      sigma_a / alpha_a = 1 for eps, sigma_a < 1 for v, 1 for x0, 1/2 for a flow's velocity."""

    def __init__(self, net: nn.Module, schedule: Schedule, *, prediction: str, anchor: float = 1.0):
        super().__init__()
        _check_prediction(prediction, schedule)
        alpha_a, sigma_a, _ = schedule.coefficients(torch.tensor(anchor, dtype=torch.float64))
        if prediction == "epsilon" and alpha_a == 0:
            raise ValueError(f"cannot start a student from a {prediction!r} teacher with alpha = {alpha_a.item()} at t = {anchor}")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.alpha_a, self.sigma_a = alpha_a.item(), sigma_a.item()

    def forward(self, eps, t, cond=None):
        pred = self.net(eps, self.schedule.network_time(t), cond)
        # In float32 even under autocast: the conversion multiplies an eps-prediction's error by sigma_a / alpha_a.
        with torch.autocast(eps.device.type, enabled=False):
            return to_x0(pred.float(), kind=self.prediction, x_t=eps.float(), alpha=self.alpha_a, sigma=self.sigma_a)


# ----------------------------------------------------------------------------------------------------
# 6. The bootstrap objective.


@dataclasses.dataclass(frozen=True)
class BootConfig:
    """Choices the paper leaves open, with our defaults. See README for what each was measured to do."""
    weighting: str = "inv_delta2"  # "inv_delta2": |g_s - target|^2 / delta^2 (the Signal-ODE residual) | "constant"
    boundary: str = "exact"        # "exact": y_T is known, the student is never asked at T | "loss": + |g(eps,T) - f(eps,T)|^2
    order: int = 1                 # teacher step: 1 = DDIM (1 call), 2 = Heun in signal space (2 calls)
    jump: int = 1                  # teacher steps per target: s = t_{k - jump}, fewer bootstrap hops

    def __post_init__(self):
        if self.weighting not in ("inv_delta2", "constant") or self.boundary not in ("exact", "loss"):
            raise ValueError(f"bad BootConfig {self}: weighting in (inv_delta2, constant), boundary in (exact, loss)")
        if self.order not in (1, 2) or self.jump < 1:
            raise ValueError(f"bad BootConfig {self}: order must be 1 or 2, jump at least 1")


def teacher_step(teacher, y, eps, cond, *, t, s, at_t, at_s, order, final=False):
    """One teacher step of the Signal-ODE dy/dlam = f(alpha y + sigma eps) - y from t down to s, no gradient:
    DDIM (order 1, one call) or Heun (order 2, two). at_t, at_s = (alpha, sigma, lam) at t and at s.
    final: every sample steps to s = 0, so Heun's second call is not made (see below)."""
    (alpha_t, sigma_t, lam_t), (alpha_s, sigma_s, lam_s) = at_t, at_s
    x_t = _per_sample(alpha_t, eps) * y + _per_sample(sigma_t, eps) * eps
    f_t = teacher(x_t, t.float(), cond).to(y.dtype)
    delta = _per_sample(signal_delta(lam_t=lam_t, lam_s=lam_s), y)
    y_s = signal_step(y_t=y, x0=f_t, delta=delta)
    if order == 1 or final:
        return y_s
    # Heun: f linear in lam over [lam_t, lam_s] integrates to y_s + (f_s - f_t)(1 - delta / h), h = lam_s - lam_t.
    # The last step (s = 0, h = inf) stays first order: the teacher is never called at sigma = 0. In a batch that
    # mixes it with other steps (training) its rows still ride along in the one batched call, their answer unused.
    last = s == 0
    s_call = torch.where(last, t, s)
    alpha_call, sigma_call = torch.where(last, alpha_t, alpha_s), torch.where(last, sigma_t, sigma_s)
    x_s = _per_sample(alpha_call, eps) * y_s + _per_sample(sigma_call, eps) * eps
    f_s = teacher(x_s, s_call.float(), cond).to(y.dtype)
    h = _per_sample(lam_s - lam_t, y)
    correction = torch.where(torch.isinf(h), torch.ones_like(h), 1 - delta / h)
    return torch.where(_per_sample(last, y), y_s, y_s + (f_s - f_t) * correction)


@torch.no_grad()
def bootstrap_target(student, teacher, eps, *, schedule, grid, k, cond=None, config=BootConfig(), coefficients=None):
    """target = y_t + delta (f(alpha_t y_t + sigma_t eps, t, c) - y_t) with y_t = stopgrad g(eps, t_k), or the
    exact y_T at k = N; with `jump`, that many teacher steps in a row. Returns (target, s = t_{max(k - jump, 0)}).
    coefficients: (alpha, sigma, lam) on the grid, when the caller has them (each step only indexes them)."""
    alpha, sigma, lam = schedule.coefficients(grid) if coefficients is None else coefficients
    n, j = len(grid) - 1, (k - config.jump).clamp(min=0)
    y = student(eps, grid[k].float(), cond).to(eps.dtype)
    if config.boundary == "exact":  # y_T is known: the student is never asked at T
        y_T = _start(schedule, eps, alpha, sigma)
        y = torch.where(_per_sample(k == n, eps), y_T, y)
    for i in range(config.jump):  # from t_{k - i} to t_{k - i - 1}; a sample already at its s stays there
        now, nxt = (k - i).clamp(min=0), (k - i - 1).clamp(min=0)
        stepped = teacher_step(teacher, y, eps, cond, t=grid[now], s=grid[nxt], at_t=(alpha[now], sigma[now], lam[now]),
                                at_s=(alpha[nxt], sigma[nxt], lam[nxt]), order=config.order)
        y = torch.where(_per_sample(now > j, y), stepped, y)
    return y, grid[j]


def boot_loss(student, teacher: Teacher, eps, *, schedule: Schedule, grid, cond=None, config=BootConfig(), k=None,
              target_student=None):
    """The bootstrap objective (BOOT.md section 4), per noise eps, with t = t_k, k ~ U{1..N} (or given), s = t_{k-1}:
        y_t    = stopgrad g(eps, t)                                   (the exact y_T when k = N)
        target = y_t + delta (f(alpha_t y_t + sigma_t eps, t, c) - y_t)  (one teacher DDIM step: bootstrap_target)
        loss   = weight(delta) |g(eps, s) - target|^2,  weight = 1 / delta^2 or 1
    Options (BootConfig): `order` 2 makes the teacher step Heun's, `jump` J makes s = t_{k-J} (J teacher steps),
    `boundary` "loss" adds |g(eps, T) - f(eps, T)|^2. target_student makes y_t in place of the student (an EMA
    copy: the target network of consistency models).

    Returns (loss, logs): logs holds detached tensors worth logging (call .item() when you log)."""
    grid = grid.to(eps.device)
    if k is None:
        k = torch.randint(1, len(grid), (eps.shape[0],), device=eps.device)
    coefficients = schedule.coefficients(grid)  # (alpha, sigma, lam) on the grid
    target, s = bootstrap_target(student if target_student is None else target_student, teacher, eps,
                                 schedule=schedule, grid=grid, k=k, cond=cond, config=config, coefficients=coefficients)
    lam = coefficients[2]
    delta = signal_delta(lam_t=lam[k], lam_s=lam[(k - config.jump).clamp(min=0)]).float()
    weight = delta.pow(-2) if config.weighting == "inv_delta2" else torch.ones_like(delta)
    if config.boundary == "exact":
        residual = (student(eps, s.float(), cond) - target).float().pow(2).flatten(1).mean(1)
        loss = (weight * residual).mean()
        return loss, {"loss": loss.detach(), "residual": residual.mean().detach(), "delta": delta.mean()}
    # Paper-style boundary |g(eps, T) - f(eps, T)|^2 (exact only when alpha_T = 0): the student runs once on
    # both halves, so that wrappers such as DistributedDataParallel see a single forward pass.
    t_T = grid[-1].expand(eps.shape[0])
    with torch.no_grad():
        f_T = teacher(eps, t_T.float(), cond)
    both = lambda a, b: None if a is None else torch.cat([a, b])
    g_s, g_T = student(both(eps, eps), torch.cat([s, t_T]).float(), both(cond, cond)).chunk(2)
    residual = (g_s - target).float().pow(2).flatten(1).mean(1)
    boundary = (g_T - f_T).float().pow(2).mean()
    loss = (weight * residual).mean() + boundary
    return loss, {"loss": loss.detach(), "residual": residual.mean().detach(), "delta": delta.mean(),
                  "boundary": boundary.detach()}


# ----------------------------------------------------------------------------------------------------
# 7. A data-free distribution corrector (BOOT.md section 10): DMD's score difference on the student's own samples.


def random_times(schedule: Schedule, n: int, *, lo: float = 0.0, hi: float = 1.0, generator=None, device=None):
    """n float64 times uniform in (lo, hi], snapped onto a discrete teacher's timesteps (never below its first)."""
    t = hi - (hi - lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return schedule.snap(t).clamp(min=1 / schedule.train_steps) if schedule.train_steps else t


def noised(x0, noise, *, schedule: Schedule, t):
    """x_t = alpha_t x0 + sigma_t n, the forward process of the schedule's family, t per sample."""
    alpha, sigma, _ = schedule.coefficients(t.double())
    return _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * noise


def corrector_loss(x, teacher: Teacher, fake: Teacher, noise, *, schedule: Schedule, t, cond=None):
    """DMD's distribution-matching term (Yin et al. 2024) on one-call samples x = g(eps, 0), with gradient:
        x_t  = alpha_t x + sigma_t n
        grad = (f_fake(x_t, t, c) - f(x_t, t, c)) / mean_pixels |x - f(x_t, t, c)|   (no gradient through either)
        loss = 1/2 mean |x - stopgrad(x - grad)|^2,   so  d loss / dx = grad / x.numel()
    f is the teacher (the real distribution's denoiser), f_fake the denoiser of the student's own samples (a copy of
    the teacher trained with fake_loss). A descent step moves x towards what the teacher denoises and away from what
    the fake one does: the reverse KL from the student's distribution to the teacher's, zero where f_fake = f. The
    normaliser makes the step size independent of how far the teacher moves x (it never reaches 0 before eps).
    Returns (loss, logs)."""
    with torch.no_grad():
        x_t = noised(x.detach(), noise, schedule=schedule, t=t)
        f_real = teacher(x_t, t.float(), cond).to(x.dtype)
        f_fake = fake(x_t, t.float(), cond).to(x.dtype)
        scale = (x.detach() - f_real).abs().flatten(1).mean(1).clamp(min=torch.finfo(x.dtype).eps)
        grad = (f_fake - f_real) / _per_sample(scale, x)
    loss = 0.5 * (x - (x - grad).detach()).float().pow(2).mean()
    return loss, {"corrector": loss.detach(), "corrector_grad": grad.abs().mean()}


def fake_loss(fake_net, x, noise, *, schedule: Schedule, prediction: str, t, cond=None):
    """The fake network's denoising loss on the student's samples x (detached), in the teacher's own parameterisation:
    |net(x_t, teacher_time(t), c) - from_x0(x)|^2, i.e. the noise n for eps, alpha n - sigma x for v, x for a sample
    (a preconditioned EDM denoiser), n - x for a flow's velocity. f_fake = denoiser(fake_net, schedule, prediction)."""
    x = x.detach()
    alpha, sigma, _ = (_per_sample(c, x) for c in schedule.coefficients(t.double()))
    x_t = alpha * x + sigma * noise
    target = from_x0(x, kind=prediction, x_t=x_t, alpha=alpha, sigma=sigma)
    pred = fake_net(x_t, schedule.teacher_time(t), cond)
    return (pred.float() - target.float()).pow(2).mean()


# ----------------------------------------------------------------------------------------------------
# 8. Sampling.


@torch.no_grad()
def sample_student(student, eps, cond=None):
    """x0 = g(eps, 0): one network call."""
    return student(eps, torch.zeros(eps.shape[0], device=eps.device), cond)


@torch.no_grad()
def fixed_point(teacher: Teacher, eps, *, schedule: Schedule, grid, cond=None, order: int = 1):
    """What a perfect student returns on the grid: y_T, then one teacher step per grid step down to y_0 (the
    teacher's N-step sampler in signal space). Shape (N + 1, *eps.shape); row k is the signal at t_k."""
    table = schedule.coefficients(grid)
    y_T = _start(schedule, eps, *table[:2])
    return torch.stack(_down_the_grid(teacher, y_T, eps, cond, grid=grid, table=table, k=len(grid) - 1, order=order)[::-1])


@torch.no_grad()
def ddim_sample(teacher: Teacher, eps, *, schedule: Schedule, steps: Optional[int] = None, cond=None, spacing="t",
                grid=None):
    """The teacher's reference sampler in x-space: `steps` DDIM steps on time_grid(schedule, steps, spacing=spacing),
    or the steps of a given grid (ascending, grid[-1] = T), from x_T (eps, or sigma_T eps) down to x_0."""
    grid = (time_grid(schedule, steps, spacing=spacing) if grid is None else grid).to(eps.device)
    alpha, sigma, _ = (c.to(eps.dtype) for c in schedule.coefficients(grid))
    x = eps if schedule.variance_preserving else sigma[-1] * eps
    for k in range(len(grid) - 1, 0, -1):
        x0 = teacher(x, grid[k].float().expand(eps.shape[0]), cond)
        x = ddim_step(x_t=x, x0=x0, alpha_t=alpha[k], sigma_t=sigma[k], alpha_s=alpha[k - 1], sigma_s=sigma[k - 1])
    return x


@torch.no_grad()
def sample_any_t(student, teacher: Teacher, eps, *, schedule: Schedule, grid, j: int, cond=None, order: int = 1):
    """BOOT's own knob: one student call to the grid time t_j, then j teacher steps of the Signal-ODE down the grid
    (DDIM, or Heun with order 2): 1 + j calls, or 2j with Heun (its last step, to s = 0, makes one). j = 0 is
    sample_student; at j = N the start is the exact y_T. A perfect student gives the teacher's N-step sampler
    (fixed_point) for every j."""
    if not 0 <= j < len(grid):
        raise ValueError(f"j must be a grid index in [0, {len(grid) - 1}], got {j}")
    grid = grid.to(eps.device)
    table = schedule.coefficients(grid)
    if j == len(grid) - 1:
        y = _start(schedule, eps, *table[:2])
    else:
        y = student(eps, grid[j].float().expand(eps.shape[0]), cond).to(eps.dtype)
    return _down_the_grid(teacher, y, eps, cond, grid=grid, table=table, k=j, order=order)[-1]


def _down_the_grid(teacher, y, eps, cond, *, grid, table, k, order):
    """[y at t_k, then after each teacher step down the grid, ..., y at t_0]."""
    b, ys, ends_at_0 = eps.shape[0], [y], bool(grid[0] == 0)
    for i in range(k, 0, -1):
        at_t, at_s = ([c[m].expand(b) for c in table] for m in (i, i - 1))
        ys.append(teacher_step(teacher, ys[-1], eps, cond, t=grid[i].expand(b), s=grid[i - 1].expand(b), at_t=at_t,
                                at_s=at_s, order=order, final=ends_at_0 and i == 1))
    return ys
