"""Property tests of boot.py against the oracles of BOOT.md: exact teachers and closed-form trajectories."""
import math

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import boot
from bootkit import exact

SCHEDULES = {
    "cosine": boot.Schedule.cosine,
    "linear": boot.Schedule.linear,
    "discrete": lambda: boot.Schedule.discrete(_scaled_linear_alphas_cumprod()),
}
FAMILIES = {  # schedules that are not variance preserving: flow matching (SD3's shift) and EDM
    "flow": boot.Schedule.flow,
    "flow-shift3": lambda: boot.Schedule.flow(3.0),
    "edm": boot.Schedule.edm,
}
EVERY = {**SCHEDULES, **FAMILIES}
torch_settings = settings(deadline=None, max_examples=40, derandomize=True)


def _scaled_linear_alphas_cumprod(n=1000, beta_start=0.00085, beta_end=0.012):
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _close(a, b, tol=1e-5):
    return torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


# --- schedules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_is_variance_preserving_with_decreasing_lambda(name):
    schedule = SCHEDULES[name]()
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha, sigma, lam = schedule.coefficients(t)
    assert _close(alpha ** 2 + sigma ** 2, torch.ones_like(t), 1e-12)
    assert (lam[1:] < lam[:-1]).all(), "lambda = log(alpha / sigma) must decrease in t (our sign convention)"
    assert alpha[0] == 1 and sigma[0] == 0 and lam[0] == math.inf
    assert lam[1] > 0 > lam[-1], "t near 0 is nearly clean, t = 1 nearly pure noise"


def test_schedule_endpoints():
    assert boot.Schedule.cosine().coefficients(torch.tensor(1.0, dtype=torch.float64))[0] == 0
    a, _, _ = boot.Schedule.linear().coefficients(torch.tensor(1.0, dtype=torch.float64))
    assert _close(a ** 2, torch.tensor(math.exp(-(0.1 + 0.5 * 19.9)), dtype=torch.float64), 1e-12)
    ac = _scaled_linear_alphas_cumprod()
    a, _, _ = boot.Schedule.discrete(ac).coefficients(torch.tensor(1.0, dtype=torch.float64))
    assert _close(a ** 2, ac[-1], 1e-12)


def test_coefficients_are_computed_in_float64_and_stored_in_float32():
    schedule = boot.Schedule.cosine()
    alpha32, _, _ = schedule.coefficients(torch.tensor([0.5]))
    alpha64, _, _ = schedule.coefficients(torch.tensor([0.5], dtype=torch.float64))
    assert alpha32.dtype == torch.float32 and alpha64.dtype == torch.float64
    assert alpha32.item() == pytest.approx(alpha64.item(), rel=1e-7)


def test_discrete_schedule_matches_diffusers_scaled_linear():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = boot.Schedule.discrete(sched.alphas_cumprod)
    n = len(sched.alphas_cumprod)
    t = (torch.arange(n, dtype=torch.float64) + 1) / n
    alpha, _, _ = ours.coefficients(t)
    assert _close(alpha ** 2, sched.alphas_cumprod.double(), 1e-7)
    assert torch.equal(ours.teacher_time(t), torch.arange(n, dtype=torch.float64))


def test_discrete_rejects_bad_alphas_cumprod():
    for bad in ([0.9, 0.95, 0.5], [0.9, 0.0, 0.0], [0.9, 0.0, 0.5], [1.5, 0.5]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            boot.Schedule.discrete(torch.tensor(bad))


def _moved(schedule, ulps: int):
    """The schedule with log alpha^2 moved `ulps` float64 ulps (up when positive) at every t, its ends included:
    what another CPU's libm may round it to."""
    def log_alpha2(t):
        x = schedule.log_alpha2(t)
        toward = torch.full_like(x, math.inf if ulps > 0 else -math.inf)
        for _ in range(abs(ulps)):
            x = torch.nextafter(x, toward)
        return x
    return boot.Schedule(log_alpha2, name=f"{schedule.name}{ulps:+d}ulp", train_steps=schedule.train_steps)


def _assert_exact_ends_finite_grids_and_loss(schedule, *, bounded: bool):
    """alpha_0 = 1, sigma_0 = 0, lambda_0 = inf exactly; coefficients in range (alpha, sigma <= 1 where bounded: variance
    preserving); finite lambda inside, every grid spacing finite, and a finite loss and gradient of each order."""
    t = torch.tensor([0.0, 1e-12, 1e-6] + [i / 100 for i in range(1, 100)] + [1 - 1e-9, 1.0], dtype=torch.float64)
    alpha, sigma, lam = schedule.coefficients(t)
    assert alpha[0] == 1 and sigma[0] == 0 and lam[0] == math.inf, "t = 0 is the data, exactly, on any libm"
    assert ((alpha >= 0) & (sigma >= 0)).all() and not torch.isnan(lam).any()
    assert not bounded or ((alpha <= 1) & (sigma <= 1)).all()
    assert torch.isfinite(lam[1:-1]).all() and lam[-1] < 0
    for spacing in boot.SPACINGS:
        grid = boot.time_grid(schedule, 8, spacing=spacing)
        assert torch.isfinite(grid).all() and grid[0] == 0 and grid[-1] == 1
    teacher = exact.toy_teacher("mixture", schedule)
    student = boot.MLPStudent(dim=2, width=16, depth=2)
    for config in (boot.BootConfig(), boot.BootConfig(order=2)):
        loss, _ = boot.boot_loss(student, teacher, torch.randn(32, 2), schedule=schedule, config=config,
                                 grid=boot.time_grid(schedule, 8, spacing="quadratic"))
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in student.parameters())


@torch_settings
@given(name=st.sampled_from(sorted(SCHEDULES)), ulps=st.integers(-3, 3).filter(bool))
@example(name="cosine", ulps=1).via("rounding up at t = 0 made sigma_0 NaN")
@example(name="linear", ulps=1)
@example(name="discrete", ulps=1)
@example(name="cosine", ulps=-1)
def test_schedules_stay_in_range_whichever_way_log_alpha2_rounds(name, ulps):
    schedule = _moved(SCHEDULES[name](), ulps)
    _assert_exact_ends_finite_grids_and_loss(schedule, bounded=True)


def test_zero_terminal_snr_has_alpha_T_zero_and_finite_coefficients_before_it():
    ac = _scaled_linear_alphas_cumprod()
    ac[-1] = 0
    schedule = boot.Schedule.discrete(ac)
    t = (torch.arange(1001, dtype=torch.float64)) / 1000
    alpha, sigma, lam = schedule.coefficients(t)
    assert alpha[-1] == 0 and sigma[-1] == 1 and lam[-1] == -math.inf
    assert torch.isfinite(lam[1:-1]).all() and torch.isfinite(alpha).all() and torch.isfinite(sigma).all()
    assert boot.signal_delta(lam_t=lam[-1], lam_s=lam[-2]) == 1, "the first step lands on the teacher's x0"
    with pytest.raises(ValueError, match="alpha_T = 0"):
        boot.denoiser(lambda x, t, c: x, schedule, prediction="epsilon")


# --- families beyond variance preservation: flow matching and EDM -------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.1])
def test_flow_schedule_is_sd3s_shifted_straight_line_with_exact_ends(shift):
    schedule = boot.Schedule.flow(shift)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha, sigma, lam = schedule.coefficients(t)
    assert not schedule.variance_preserving
    assert _close(alpha + sigma, torch.ones_like(t), 1e-14), "x_t = (1 - sigma) x0 + sigma eps"
    assert _close(sigma, shift * t / (1 + (shift - 1) * t), 1e-14), "diffusers' FlowMatchEulerDiscreteScheduler shift"
    assert (lam[1:] < lam[:-1]).all()
    assert alpha[0] == 1 and sigma[0] == 0 and lam[0] == math.inf, "t = 0 is the data"
    assert alpha[-1] == 0 and sigma[-1] == 1 and lam[-1] == -math.inf, "t = T is pure noise: x_T = eps"
    assert schedule.coefficients(schedule.time_of(0.0))[2].abs() < 1e-9 and schedule.time_of(0.0) == pytest.approx(1 / (1 + shift))


def test_edm_schedule_is_karras_rho_spacing_down_to_zero_with_exact_ends():
    schedule = boot.Schedule.edm(sigma_max=80.0, rho=7.0)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha, sigma, lam = schedule.coefficients(t)
    assert (alpha == 1).all() and _close(sigma, 80 * t ** 7, 1e-14) and (lam[1:] < lam[:-1]).all()
    assert sigma[0] == 0 and lam[0] == math.inf and sigma[-1] == 80 and lam[-1] == -math.log(80)
    # Karras' sampler (sigma_min = 0.002 ... 80, rho = 7) is the uniform-t grid from (sigma_min / sigma_max)^(1/rho) to 1.
    ramp = torch.linspace(0, 1, 18, dtype=torch.float64)
    karras = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    t_k = 1 - ramp * (1 - (0.002 / 80) ** (1 / 7))
    assert _close(schedule.coefficients(t_k)[1], karras, 1e-12)


@pytest.mark.parametrize("make, words", [
    (lambda: boot.Schedule.flow(0.0), "shift must be positive"),
    (lambda: boot.Schedule.flow(-1.0), "shift must be positive"),
    (lambda: boot.Schedule.flow(math.nan), "shift must be positive"),
    (lambda: boot.Schedule.edm(rho=-7.0), "rho must be positive"),
    (lambda: boot.Schedule.edm(rho=0.0), "rho must be positive"),
    (lambda: boot.Schedule.edm(sigma_max=0.0), "sigma_max must be positive"),
    (lambda: boot.Schedule.edm(sigma_max=-80.0), "sigma_max must be positive"),
])
def test_flow_and_edm_schedules_refuse_impossible_parameters_by_name(make, words):
    """shift 0 gave NaN at t = 1, shift -1 alpha 1.5, rho -7 a sigma above sigma_max: refused, not computed."""
    with pytest.raises(ValueError, match=words):
        make()


def _moved_family(schedule, ulps: int):
    """The family with alpha_t and sigma_t each moved `ulps` float64 ulps at every t, its ends included."""
    def alpha_sigma(t):
        out = []
        for x in schedule.alpha_sigma(t):
            toward = torch.full_like(x, math.inf if ulps > 0 else -math.inf)
            for _ in range(abs(ulps)):
                x = torch.nextafter(x, toward)
            out.append(x)
        return tuple(out)
    return boot.Schedule(alpha_sigma=alpha_sigma, name=f"{schedule.name}{ulps:+d}ulp")


@torch_settings
@given(name=st.sampled_from(sorted(FAMILIES)), ulps=st.integers(-3, 3).filter(bool))
@example(name="flow", ulps=-1).via("alpha_T = 0 rounding below 0 would make lambda_T NaN")
@example(name="edm", ulps=1)
def test_families_stay_in_range_whichever_way_they_round(name, ulps):
    schedule = _moved_family(FAMILIES[name](), ulps)
    _assert_exact_ends_finite_grids_and_loss(schedule, bounded=False)


@pytest.mark.parametrize("name", FAMILIES)
def test_families_start_at_sigma_T_eps_with_signal_zero(name):
    """The convention of boot.py's notation block: x_T = eps if variance preserving, else sigma_T eps (y_T = 0)."""
    schedule = FAMILIES[name]()
    alpha_T, sigma_T, _ = schedule.coefficients(torch.ones(1, dtype=torch.float64))
    eps = torch.randn(4, 2, dtype=torch.float64)
    y_T = boot.start_signal(eps, alpha_T=alpha_T, sigma_T=sigma_T, variance_preserving=False)
    assert torch.equal(y_T, torch.zeros_like(eps)) and _close(alpha_T * y_T + sigma_T * eps, sigma_T * eps)
    teacher = _CountingTeacher(exact.toy_teacher("mixture", schedule))
    boot.ddim_sample(teacher, eps, schedule=schedule, steps=4)
    assert torch.equal(teacher.calls[0][0], sigma_T * eps), "the sampler starts at x_T = sigma_T eps"
    with pytest.raises(ValueError, match="v_prediction is alpha eps - sigma x0 of a variance-preserving schedule"):
        boot.denoiser(lambda x, t, c: x, schedule, prediction="v_prediction")


# --- the time grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", boot.SPACINGS)
@pytest.mark.parametrize("name", EVERY)
def test_time_grid_runs_from_zero_to_one(name, spacing):
    grid = boot.time_grid(EVERY[name](), 40, spacing=spacing)
    assert grid.dtype == torch.float64 and len(grid) == 41
    assert grid[0] == 0 and grid[-1] == 1 and (grid[1:] > grid[:-1]).all()


def test_quadratic_grid_is_fine_near_the_data():
    grid = boot.time_grid(boot.Schedule.cosine(), 8, spacing="quadratic")
    assert torch.equal(grid, (torch.arange(9, dtype=torch.float64) / 8) ** 2)


def test_lambda_grid_is_uniform_in_lambda():
    schedule = boot.Schedule.linear()
    _, _, lam = schedule.coefficients(boot.time_grid(schedule, 20, spacing="lambda"))
    gaps = lam[1:-1] - lam[2:]
    assert _close(gaps, gaps.mean().expand_as(gaps), 1e-6)


def test_uniform_t_grid_on_discrete_teacher_is_diffusers_trailing_spacing():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    timestep_spacing="trailing")
    schedule = boot.Schedule.discrete(sched.alphas_cumprod)
    sched.set_timesteps(50)
    grid = boot.time_grid(schedule, 50)
    assert torch.equal(schedule.teacher_time(grid[1:]).flip(0).long(), sched.timesteps)


def test_time_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="grid steps"):
        boot.time_grid(boot.Schedule.cosine(), 0)
    with pytest.raises(ValueError, match="spacing"):
        boot.time_grid(boot.Schedule.cosine(), 8, spacing="log")


# --- parameterizations -------------------------------------------------------------------------------


@torch_settings
@given(kind=st.sampled_from(boot.PREDICTIONS), alpha=st.floats(0.01, 0.999), seed=st.integers(0, 2 ** 16))
def test_conversions_round_trip(kind, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    sigma = math.sqrt(1 - alpha ** 2)
    x_t = alpha * x0 + sigma * eps
    pred = boot.from_x0(x0, kind=kind, x_t=x_t, alpha=alpha, sigma=sigma)
    assert _close(boot.to_x0(pred, kind=kind, x_t=x_t, alpha=alpha, sigma=sigma), x0, 1e-9)
    truth = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0, "flow_prediction": eps - x0}[kind]
    assert _close(pred, truth, 1e-9), "each kind must mean what diffusers means by it"


@torch_settings
@given(kind=st.sampled_from(["epsilon", "sample", "flow_prediction"]), alpha=st.floats(0.01, 1.0),
       sigma=st.floats(0.01, 80.0), seed=st.integers(0, 2 ** 16))
def test_conversions_round_trip_for_any_alpha_and_sigma(kind, alpha, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    pred = boot.from_x0(x0, kind=kind, x_t=x_t, alpha=alpha, sigma=sigma)
    assert _close(boot.to_x0(pred, kind=kind, x_t=x_t, alpha=alpha, sigma=sigma), x0, 1e-9)
    assert _close(pred, {"epsilon": eps, "sample": x0, "flow_prediction": eps - x0}[kind], 1e-9)


def test_flow_velocity_is_diffusers_x0_and_its_ddim_step_is_the_euler_step():
    """diffusers: x0 = x_t - sigma v (FlowMatchEulerDiscreteScheduler's stochastic branch, DPMSolver's
    flow_prediction) and x_s = x_t + (sigma_s - sigma_t) v (its Euler step): the DDIM step, exactly."""
    schedule = boot.Schedule.flow(3.0)
    (a_t, a_s), (s_t, s_s), _ = schedule.coefficients(torch.tensor([0.7, 0.2], dtype=torch.float64))
    x_t, v = torch.randn(2, 5, 3, dtype=torch.float64)
    x0 = boot.to_x0(v, kind="flow_prediction", x_t=x_t, alpha=a_t, sigma=s_t)
    assert _close(x0, x_t - s_t * v, 1e-12)
    x_s = boot.ddim_step(x_t=x_t, x0=x0, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s)
    assert _close(x_s, x_t + (s_s - s_t) * v, 1e-12)


def test_unknown_prediction_type_is_rejected():
    with pytest.raises(ValueError, match="unknown prediction type"):
        boot.to_x0(torch.zeros(1), kind="eps", x_t=torch.zeros(1), alpha=1.0, sigma=0.0)
    with pytest.raises(ValueError, match="unknown prediction type"):
        boot.denoiser(lambda x, t, c: x, boot.Schedule.linear(), prediction="score")


def test_eps_teacher_is_refused_where_alpha_T_is_zero():
    with pytest.raises(ValueError, match="alpha_T = 0"):
        boot.denoiser(lambda x, t, c: x, boot.Schedule.cosine(), prediction="epsilon")


# --- the DDIM step in x-space and in signal space ----------------------------------------------------


@torch_settings
@given(name=st.sampled_from(sorted(EVERY)), s=st.floats(0.0, 1.0), t=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_signal_step_equals_ddim_step(name, s, t, seed):
    s, t = sorted((s, t))
    if t - s < 1e-4:
        t = min(1.0, s + 0.01)
        s = t - 0.01
    schedule = EVERY[name]()
    a, sg, lam = schedule.coefficients(torch.tensor([t, s], dtype=torch.float64))
    a_t, a_s, s_t, s_s, l_t, l_s = a[0], a[1], sg[0], sg[1], lam[0], lam[1]
    gen = torch.Generator().manual_seed(seed)
    y_t, eps, x0 = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    if a_t == 0:  # at alpha_T = 0 the trajectory starts at x_T = eps, whatever y_T
        y_t = boot.start_signal(eps, alpha_T=a_t, sigma_T=s_t)
    y_s = boot.signal_step(y_t=y_t, x0=x0, delta=boot.signal_delta(lam_t=l_t, lam_s=l_s))
    x_s = boot.ddim_step(x_t=a_t * y_t + s_t * eps, x0=x0, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s)
    assert _close(a_s * y_s + s_s * eps, x_s, 1e-8)


@torch_settings
@given(a_t=st.floats(0.01, 0.98), gap=st.floats(0.001, 0.99), seed=st.integers(0, 2 ** 16))
def test_signal_step_equals_ddim_step_for_any_coefficients(a_t, gap, seed):
    a_s = a_t + gap * (1 - a_t)
    s_t, s_s = math.sqrt(1 - a_t ** 2), math.sqrt(1 - a_s ** 2)
    gen = torch.Generator().manual_seed(seed)
    y_t, eps, x0 = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    delta = boot.signal_delta(lam_t=math.log(a_t / s_t), lam_s=math.log(a_s / s_s))
    assert 0 < delta <= 1
    y_s = boot.signal_step(y_t=y_t, x0=x0, delta=delta)
    x_s = boot.ddim_step(x_t=a_t * y_t + s_t * eps, x0=x0, alpha_t=a_t, sigma_t=s_t, alpha_s=a_s, sigma_s=s_s)
    assert _close(a_s * y_s + s_s * eps, x_s, 1e-8)


def test_ddim_step_accepts_per_sample_tensors():
    x_t, x0 = torch.randn(2, 2, 4, 3, 3)
    a = torch.tensor([0.3, 0.6]).reshape(2, 1, 1, 1)
    x_s = boot.ddim_step(x_t=x_t, x0=x0, alpha_t=a, sigma_t=(1 - a ** 2).sqrt(), alpha_s=a + 0.1,
                         sigma_s=(1 - (a + 0.1) ** 2).sqrt())
    one = boot.ddim_step(x_t=x_t[1], x0=x0[1], alpha_t=0.6, sigma_t=0.8, alpha_s=0.7, sigma_s=math.sqrt(0.51))
    assert _close(x_s[1], one)


# --- boundaries --------------------------------------------------------------------------------------


def test_signal_at_t0_is_the_sample_and_the_last_step_lands_on_the_teacher():
    schedule = boot.Schedule.linear()
    alpha, sigma, lam = schedule.coefficients(torch.tensor([0.0, 0.3], dtype=torch.float64))
    assert alpha[0] == 1 and sigma[0] == 0  # y_0 = (x_0 - 0 eps) / 1 = x_0
    assert boot.signal_delta(lam_t=lam[1], lam_s=lam[0]) == 1
    student = boot.MLPStudent(dim=2)
    eps = torch.randn(5, 2)
    assert torch.equal(boot.sample_student(student, eps), student(eps, torch.zeros(5)))


class _CountingTeacher:
    def __init__(self, teacher):
        self.teacher, self.calls = teacher, []

    def __call__(self, x_t, t, cond=None):
        self.calls.append((x_t.clone(), t.clone()))
        return self.teacher(x_t, t, cond)


def _nan_at_T_student(eps, t, cond=None):
    """A student that is undefined at t = T: the exact boundary must never consult it there."""
    return torch.where((t == 1)[:, None], torch.full_like(eps, math.nan), 0.5 * eps)


@pytest.mark.parametrize("name", ["cosine", "linear", "flow", "flow-shift3", "edm"])
def test_first_target_from_T_is_the_exact_ddim_start(name):
    schedule = EVERY[name]()
    teacher = _CountingTeacher(exact.toy_teacher("mixture", schedule))
    grid = boot.time_grid(schedule, 16)
    eps = torch.randn(6, 2)
    k = torch.full((6,), 16)
    target, s = boot.bootstrap_target(_nan_at_T_student, teacher, eps, schedule=schedule, grid=grid, k=k)
    assert torch.equal(s, grid[15].expand(6))
    (a_T, a_s), (s_T, s_s) = (schedule.coefficients(grid[[16, 15]])[i].float() for i in (0, 1))
    start = eps if schedule.variance_preserving else s_T * eps
    x_T, t_T = teacher.calls[0]
    assert _close(x_T, start), "the teacher's trajectory starts at x_T = eps (variance preserving) or sigma_T eps"
    f_T = teacher.teacher(start, t_T)
    if name in ("cosine", "flow", "flow-shift3"):  # alpha_T = 0: delta = 1 and the target is the teacher's prediction itself
        assert a_T == 0 and torch.equal(target, f_T)
    x_s = boot.ddim_step(x_t=start, x0=f_T, alpha_t=a_T, sigma_t=s_T, alpha_s=a_s, sigma_s=s_s)
    assert _close(a_s * target + s_s * eps, x_s)


def test_boundary_loss_option_ties_the_student_at_T_to_the_teacher():
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    grid = boot.time_grid(schedule, 8)
    eps = torch.randn(64, 2)
    at_T = lambda e, t, shift: torch.where((t == 1)[:, None], teacher(e, torch.ones(len(e))) + shift, e)
    config = boot.BootConfig(boundary="loss")
    k = torch.full((64,), 3)
    for shift, expected in ((0.0, 0.0), (1.0, 1.0)):
        student = lambda e, t, c=None: at_T(e, t, shift)
        loss, logs = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, config=config, k=k)
        assert logs["boundary"].item() == pytest.approx(expected)
        exact_loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k)
        assert loss.item() == pytest.approx(exact_loss.item() + expected, rel=1e-6)


# --- the bootstrap objective on the exact Gaussian teacher -------------------------------------------

MEAN, STD = 0.7, 0.4


def _gaussian_student(perturb=0.0, schedule=None):
    schedule = schedule or boot.Schedule.linear()

    def student(eps, t, cond=None):
        return exact.gaussian_signal(eps, t, mean=MEAN, std=STD, schedule=schedule) + perturb * torch.sin(3 * eps)
    return student, schedule


@pytest.mark.parametrize("weighting, name", [("inv_delta2", "linear"), ("constant", "linear"), ("inv_delta2", "flow"),
                                             ("inv_delta2", "flow-shift3"), ("inv_delta2", "edm")])
def test_exact_trajectory_has_vanishing_loss_and_a_perturbed_one_does_not(weighting, name):
    student, schedule = _gaussian_student(schedule=EVERY[name]())
    wrong, _ = _gaussian_student(perturb=0.05, schedule=schedule)
    teacher = exact.MixtureTeacher(torch.full((1, 3), MEAN), STD, 1.0, schedule)
    eps = torch.randn(512, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    config = boot.BootConfig(weighting=weighting)
    losses, wrong_losses = [], []
    for n in (8, 32, 128, 512):
        grid = boot.time_grid(schedule, n)
        k = torch.arange(512) % n + 1  # every step of the grid, each equally often
        losses.append(boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k, config=config)[0].item())
        wrong_losses.append(boot.boot_loss(wrong, teacher, eps, schedule=schedule, grid=grid, k=k, config=config)[0].item())
    assert all(b < a / 2 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-4 * (1 if weighting == "inv_delta2" else 1e-2)
    if weighting == "inv_delta2":  # the residual of the Signal-ODE: an O(1) error stays O(1)
        assert min(wrong_losses) > (1e-3 if name == "linear" else 5e-4) and wrong_losses[-1] > wrong_losses[-2] / 2
    assert wrong_losses[-2] > 10 * losses[-2] and wrong_losses[-1] > 1000 * losses[-1]


def test_many_step_ddim_reaches_the_closed_form_sample():
    for schedule in (boot.Schedule.linear(), boot.Schedule.cosine(), *(make() for make in FAMILIES.values())):
        teacher = exact.MixtureTeacher(torch.full((1, 3), MEAN), STD, 1.0, schedule)
        eps = torch.randn(256, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        target = exact.gaussian_signal(eps, torch.zeros(256, dtype=torch.float64), mean=MEAN, std=STD, schedule=schedule)
        err = {n: (boot.ddim_sample(teacher, eps, schedule=schedule, steps=n) - target).pow(2).mean().sqrt().item()
               for n in (10, 100, 1000, 4000)}
        assert err[4000] < 1e-3 and err[4000] < err[1000] < err[100] < err[10], err


def test_ddim_sample_matches_diffusers_ddim_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    schedule = boot.Schedule.discrete(sched.alphas_cumprod)
    eps_net = lambda x, timestep, cond=None: torch.tanh(x) * (1 + timestep[:, None] / 1000)
    sched.set_timesteps(20)
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = eps.clone()
    for ts in sched.timesteps:
        x = sched.step(eps_net(x, ts.expand(4).double()), ts, x).prev_sample
    ours = boot.ddim_sample(boot.denoiser(eps_net, schedule, prediction="epsilon"), eps, schedule=schedule, steps=20)
    assert _close(ours, x, 1e-6)


@pytest.mark.parametrize("name", ["cosine", "flow", "flow-shift3", "edm"])
def test_chained_bootstrap_targets_of_the_teacher_are_its_ddim_sampler(name):
    """With the student equal to the teacher's own N-step DDIM signal, every target is that signal one
    grid step later: the student's fixed point is N-step DDIM, and jumps land on the same trajectory."""
    schedule = EVERY[name]()
    teacher = exact.toy_teacher("mixture", schedule)
    n, eps = 12, torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grid = boot.time_grid(schedule, n)
    alpha_T, sigma_T, _ = schedule.coefficients(grid[-1:])
    ys = {n: boot.start_signal(eps, alpha_T=alpha_T, sigma_T=sigma_T, variance_preserving=schedule.variance_preserving)}
    for k in range(n, 0, -1):
        ys[k - 1], _ = boot.bootstrap_target(lambda e, t, c=None: ys[k], teacher, eps, schedule=schedule, grid=grid,
                                             k=torch.full((32,), k))
    assert _close(ys[0], boot.ddim_sample(teacher, eps, schedule=schedule, steps=n), 1e-9)
    assert _close(torch.stack([ys[i] for i in range(n + 1)]), boot.fixed_point(teacher, eps, schedule=schedule, grid=grid))
    for jump in (2, 5):
        k = torch.randint(1, n + 1, (32,), generator=torch.Generator().manual_seed(jump))
        table = torch.stack([ys[i] for i in range(n + 1)])  # (N+1, B, 2)
        student = lambda e, t, c=None: table[(t * n).round().long(), torch.arange(32)]
        target, s = boot.bootstrap_target(student, teacher, eps, schedule=schedule, grid=grid, k=k,
                                          config=boot.BootConfig(jump=jump))
        j = (k - jump).clamp(min=0)
        assert torch.equal(s, grid[j]) and _close(target, table[j, torch.arange(32)], 1e-9)


@pytest.mark.parametrize("name", ["linear", "flow", "flow-shift3", "edm"])
def test_heun_step_is_second_order_on_the_gaussian(name):
    schedule = EVERY[name]()
    teacher = exact.MixtureTeacher(torch.full((1, 2), MEAN), STD, 1.0, schedule)
    eps = torch.randn(128, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact_mid = exact.gaussian_signal(eps, torch.full((128,), 0.05, dtype=torch.float64), mean=MEAN, std=STD,
                                      schedule=schedule)

    def error(order, n):  # the fixed point at grid time 0.05 against the exact ODE's signal there
        ys = boot.fixed_point(teacher, eps, schedule=schedule, grid=boot.time_grid(schedule, n), order=order)
        return (ys[n // 20] - exact_mid).abs().max().item()

    first = [error(1, n) for n in (40, 80, 160)]
    second = [error(2, n) for n in (40, 80, 160)]
    assert first[1] / first[2] == pytest.approx(2, rel=0.25)
    assert second[1] / second[2] > 3.3 and second[2] < first[2] / 10, (first, second)


# --- gradients ---------------------------------------------------------------------------------------


def test_no_gradient_reaches_the_teacher_and_the_target_carries_none():
    schedule = boot.Schedule.linear()
    teacher_net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    teacher = boot.denoiser(lambda x, t, c: teacher_net(torch.cat([x, t[:, None]], 1)), schedule, prediction="v_prediction")
    student = boot.MLPStudent(dim=2, width=32, depth=2)
    grid = boot.time_grid(schedule, 8)
    eps = torch.randn(16, 2)
    target, _ = boot.bootstrap_target(student, teacher, eps, schedule=schedule, grid=grid, k=torch.full((16,), 4))
    assert not target.requires_grad and target.grad_fn is None
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid)
    loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_gradient_flows_through_the_student_at_s_only():
    """d loss / d theta = mean_b w_b 2 (g(eps, s) - target) d g(eps, s) / d theta, target held fixed."""
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    student = boot.MLPStudent(dim=2, width=32, depth=2)
    grid = boot.time_grid(schedule, 8)
    eps, k = torch.randn(32, 2), torch.randint(1, 9, (32,), generator=torch.Generator().manual_seed(5))
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k)
    grads = torch.autograd.grad(loss, list(student.parameters()))
    target, s = boot.bootstrap_target(student, teacher, eps, schedule=schedule, grid=grid, k=k)
    lam = schedule.coefficients(grid)[2]
    w = boot.signal_delta(lam_t=lam[k], lam_s=lam[k - 1]).float() ** -2
    manual = (w * (student(eps, s.float()) - target.detach()).pow(2).mean(1)).mean()
    for g, m in zip(grads, torch.autograd.grad(manual, list(student.parameters()))):
        assert _close(g, m, 1e-5)


def test_a_target_network_makes_the_target_and_the_student_learns():
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    torch.manual_seed(1)
    student, target_net = boot.MLPStudent(dim=2, width=32, depth=2), boot.MLPStudent(dim=2, width=32, depth=2)
    grid, eps = boot.time_grid(schedule, 8), torch.randn(16, 2)
    k = torch.randint(1, 9, (16,), generator=torch.Generator().manual_seed(8))
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k, target_student=target_net)
    target, s = boot.bootstrap_target(target_net, teacher, eps, schedule=schedule, grid=grid, k=k)
    lam = schedule.coefficients(grid)[2]
    w = boot.signal_delta(lam_t=lam[k], lam_s=lam[k - 1]).float() ** -2
    assert _close(loss, (w * (student(eps, s.float()) - target).pow(2).mean(1)).mean())
    own, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k)
    assert not _close(loss, own)


# --- the teacher interface: guidance, adapters, exact teachers ---------------------------------------


def test_guidance_convention_and_one_batched_call():
    calls = []

    def teacher(x, t, c):
        calls.append(len(x))
        return x * c.mean(1, keepdim=True) + t[:, None]

    x, t = torch.randn(4, 3), torch.rand(4)
    cond, null = torch.randn(4, 5), torch.randn(1, 5)
    f_c, f_u = teacher(x, t, cond), teacher(x, t, null.expand(4, 5))
    calls.clear()
    assert _close(boot.guided(teacher, scale=1.0, null_cond=null)(x, t, cond), f_c)
    assert _close(boot.guided(teacher, scale=0.0, null_cond=null)(x, t, cond), f_u)
    assert _close(boot.guided(teacher, scale=7.5, null_cond=null)(x, t, cond), f_u + 7.5 * (f_c - f_u))
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert _close(boot.guided(teacher, scale=w, null_cond=null)(x, t, cond), f_u + w[:, None] * (f_c - f_u))
    assert calls == [8, 8, 8, 8], "both branches in one batched teacher call"


def test_denoiser_calls_discrete_teachers_at_their_timesteps():
    schedule = boot.Schedule.discrete(_scaled_linear_alphas_cumprod())
    seen = []
    net = lambda x, timestep, c: seen.append(timestep) or torch.zeros_like(x)
    teacher = boot.denoiser(net, schedule, prediction="epsilon")
    grid = boot.time_grid(schedule, 10, spacing="lambda")
    x = torch.randn(10, 3)
    assert _close(teacher(x, grid[1:].float(), None), x / schedule.coefficients(grid[1:])[0][:, None].float())
    assert torch.equal(seen[0], seen[0].round()) and seen[0].min() >= 0 and seen[0].max() == 999


def test_mixture_teacher_is_tweedie_posterior_mean():
    """f = (x_t + sigma^2 grad log p_t(x_t)) / alpha, with p_t the mixture noised to time t."""
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("unequal", schedule)
    x = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    alpha, sigma, _ = schedule.coefficients(t)
    a, s = alpha[:, None, None], sigma[:, None, None]
    var = a[..., 0] ** 2 * teacher.stds ** 2 + s[..., 0] ** 2                          # (B, K)
    sq = (x[:, None] - a * teacher.means).pow(2).sum(-1)
    logp = torch.logsumexp(teacher.weights.log() - var.log() - sq / (2 * var), dim=1)  # D = 2
    (score,) = torch.autograd.grad(logp.sum(), x)
    tweedie = (x + sigma[:, None] ** 2 * score) / alpha[:, None]
    assert _close(teacher(x.detach(), t), tweedie.detach(), 1e-8)


def test_finite_set_teacher_is_the_posterior_average_of_its_points():
    schedule = boot.Schedule.linear()
    points = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    teacher = exact.MixtureTeacher(points, 0.0, 1.0, schedule)
    x, t = torch.randn(16, 3, dtype=torch.float64), torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    alpha, sigma, _ = schedule.coefficients(t)
    sq = (x[:, None] - alpha[:, None, None] * points).pow(2).sum(-1)                     # (B, K), directly
    expected = torch.softmax(-sq / (2 * sigma[:, None] ** 2), dim=1) @ points
    assert teacher.finite and _close(teacher(x, t), expected, 1e-9)


def test_finite_set_teachers_trajectories_end_on_its_points():
    schedule = boot.Schedule.cosine()
    points = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    teacher = exact.MixtureTeacher(points, 0.0, 1.0, schedule)
    eps = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    end = boot.ddim_sample(teacher, eps, schedule=schedule, steps=512)
    nearest = teacher.nearest(end)
    assert _close(end, points[nearest], 1e-3) and len(nearest.unique()) > 1
    assert torch.equal(teacher.nearest(points + 1e-3), torch.arange(6))


# --- students and real learning ----------------------------------------------------------------------


def test_students_map_noise_and_time_to_signals_of_the_same_shape():
    unet = boot.UNetStudent(channels=3, base=16, mults=(1, 2), cond_dim=7)
    eps = torch.randn(2, 3, 8, 8)
    assert unet(eps, torch.rand(2), torch.randn(2, 7)).shape == eps.shape
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(2, 3, 7, 7), torch.rand(2), torch.randn(2, 7))
    mlp = boot.MLPStudent(dim=5, cond_dim=3)
    assert mlp(torch.randn(4, 5), torch.rand(4), torch.randn(4, 3)).shape == (4, 5)


def test_a_few_hundred_steps_beat_the_teachers_two_step_ddim():
    torch.manual_seed(0)
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    grid = boot.time_grid(schedule, 16)
    student = boot.MLPStudent(dim=2, width=128, depth=3)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(400):
        loss, _ = boot.boot_loss(student, teacher, torch.randn(256, 2), schedule=schedule, grid=grid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    eps = torch.randn(2048, 2, generator=torch.Generator().manual_seed(6))
    reference = boot.ddim_sample(teacher, eps, schedule=schedule, steps=512)
    rmse = lambda x: (x - reference).pow(2).sum(1).mean().sqrt().item()
    two_step = rmse(boot.ddim_sample(teacher, eps, schedule=schedule, steps=2))
    assert rmse(boot.sample_student(student, eps)) < two_step


class _TimeNet(torch.nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, dim))

    def forward(self, x, time, cond=None):
        return self.layers(torch.cat([x, time[:, None].to(x.dtype) / 1000], 1))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_student_started_from_the_teacher_is_the_teacher_at_T(prediction):
    schedule = boot.Schedule.discrete(_scaled_linear_alphas_cumprod())
    net = _TimeNet()
    student, teacher = boot.TeacherStudent(net, schedule, prediction=prediction), boot.denoiser(net, schedule, prediction=prediction)
    eps, ones = torch.randn(8, 3), torch.ones(8)
    assert _close(student(eps, ones), teacher(eps, ones, None))
    assert not _close(student(eps, ones / 2), teacher(eps, ones / 2, None)), "the teacher reads x_t, the student eps"
    with pytest.raises(ValueError, match="alpha = 0.0 at t = 1.0"):
        boot.TeacherStudent(net, boot.Schedule.cosine(), prediction="epsilon")


@pytest.mark.parametrize("schedule", [boot.Schedule.flow(), boot.Schedule.edm()], ids=["flow", "edm"])
def test_v_prediction_is_refused_off_variance_preserving_schedules_by_denoiser_and_student_alike(schedule):
    """v = alpha eps - sigma x0 is defined on a variance-preserving schedule only: both adapters refuse it, in one message."""
    for make in (boot.denoiser, boot.TeacherStudent):
        with pytest.raises(ValueError, match=f"v_prediction is alpha eps - sigma x0 of a variance-preserving schedule, "
                                             f"not of {schedule.name}"):
            make(_TimeNet(), schedule, prediction="v_prediction")


def test_student_conversion_runs_in_float32_under_autocast():
    schedule = boot.Schedule.discrete(_scaled_linear_alphas_cumprod())
    net = _TimeNet()
    student = boot.TeacherStudent(net, schedule, prediction="epsilon")
    eps, t = torch.randn(8, 3), torch.rand(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = student(eps, t)
        pred = net(eps, schedule.network_time(t))
    assert y.dtype == torch.float32 and pred.dtype == torch.bfloat16
    alpha_T, sigma_T = student.alpha_a, student.sigma_a
    assert torch.equal(y, (eps - sigma_T * pred.float()) / alpha_T), "bf16 output, but an fp32 conversion"


class _RecordingNet:
    """An eps-network that records the timesteps it is called at."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, timestep, cond=None):
        self.seen.append(timestep)
        return 0.1 * x


@pytest.mark.parametrize("order, jump", [(1, 1), (2, 3)])
def test_bf16_noise_calls_the_teacher_at_the_same_integer_timesteps_as_fp32(order, jump):
    schedule = boot.Schedule.discrete(_scaled_linear_alphas_cumprod())
    grid = boot.time_grid(schedule, 64)
    config = boot.BootConfig(order=order, jump=jump)
    k = torch.arange(1, 65)
    seen = {}
    for dtype in (torch.float32, torch.bfloat16):
        net = _RecordingNet()
        teacher = boot.denoiser(net, schedule, prediction="epsilon")
        student = lambda eps, t, c=None: torch.zeros_like(eps)
        boot.boot_loss(student, teacher, torch.randn(64, 3).to(dtype), schedule=schedule, grid=grid, config=config, k=k)
        boot.ddim_sample(teacher, torch.randn(4, 3).to(dtype), schedule=schedule, steps=64)
        seen[dtype] = net.seen
        assert all(s.dtype == torch.int64 for s in net.seen), "a discrete teacher gets exact integer timesteps"
    assert all(torch.equal(a, b) for a, b in zip(*seen.values())) and len(seen[torch.float32]) == len(seen[torch.bfloat16])
    assert seen[torch.float32][0].max() == 999 and 983 in seen[torch.float32][0], "bf16 would have made 999 -> 1000"


def test_the_default_loss_is_the_plain_objective_of_boot_md_line_by_line():
    """BOOT.md section 4 written out here with no option: boot_loss must equal it to the last bit."""
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    student = boot.MLPStudent(dim=2, width=32, depth=3)
    grid = boot.time_grid(schedule, 8, spacing="quadratic")
    eps, k = torch.randn(64, 2), torch.randint(1, 9, (64,))
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=grid, k=k)

    alpha, sigma, lam = schedule.coefficients(grid)
    t, s = grid[k], grid[k - 1]
    with torch.no_grad():
        y_t = student(eps, t.float())                                           # stopgrad g(eps, t)
        y_T = alpha[-1] / (1 + sigma[-1]) * eps                                  # the exact y_T at k = N
        y_t = torch.where((k == 8)[:, None], y_T.float(), y_t)
        x_t = alpha[k, None].float() * y_t + sigma[k, None].float() * eps
        delta = -torch.expm1(lam[k] - lam[k - 1])
        target = y_t + delta[:, None].float() * (teacher(x_t, t.float()) - y_t)   # one teacher DDIM step
    residual = (student(eps, s.float()) - target).pow(2).mean(1)
    plain = (delta.float().pow(-2) * residual).mean()                            # weight 1 / delta^2
    assert torch.equal(loss, plain)


def test_any_t_sampling_of_a_perfect_student_is_the_teachers_grid_sampler_for_every_j():
    schedule = boot.Schedule.cosine()
    teacher = exact.toy_teacher("mixture", schedule)
    grid = boot.time_grid(schedule, 8, spacing="quadratic")
    eps = torch.randn(64, 2, dtype=torch.float64)
    ys = boot.fixed_point(teacher, eps, schedule=schedule, grid=grid)
    calls = []
    perfect = lambda e, t, c=None: calls.append(t) or ys[(grid[:, None] - t[None].double()).abs().argmin(0)[0]]
    ddim_8 = boot.ddim_sample(teacher, eps, schedule=schedule, steps=8, spacing="quadratic")
    for j in range(9):
        x = boot.sample_any_t(perfect, teacher, eps, schedule=schedule, grid=grid, j=j)
        assert _close(x, ddim_8, 1e-9), j
    assert len(calls) == 8, "one student call for j < N; none at j = N, where y_T is exact"
    student = boot.MLPStudent(dim=2, width=16).double()
    assert torch.equal(boot.sample_any_t(student, teacher, eps, schedule=schedule, grid=grid, j=0),
                       boot.sample_student(student, eps))
    assert not _close(boot.sample_any_t(student, teacher, eps, schedule=schedule, grid=grid, j=3), ddim_8, 1e-3)
    with pytest.raises(ValueError, match="grid index"):
        boot.sample_any_t(student, teacher, eps, schedule=schedule, grid=grid, j=9)
    heun = boot.fixed_point(teacher, eps, schedule=schedule, grid=grid, order=2)
    perfect = lambda e, t, c=None: heun[(grid[:, None] - t[None].double()).abs().argmin(0)[0]]
    for j in (1, 5, 8):
        x = boot.sample_any_t(perfect, teacher, eps, schedule=schedule, grid=grid, j=j, order=2)
        assert _close(x, heun[0], 1e-9), j


def test_heuns_last_step_to_t_0_makes_one_teacher_call_and_the_same_sample():
    """fixed_point and sample_any_t with Heun: 2 calls a step, 1 on the step to t_0 (its second answer would go
    unused); the samples are those of the step taken with both calls (the last step is first order either way)."""
    schedule = boot.Schedule.cosine()
    mixture, calls = exact.toy_teacher("mixture", schedule), []
    counting = lambda x, t, c=None: calls.append(len(x)) or mixture(x, t, c)
    grid, eps = boot.time_grid(schedule, 6, spacing="quadratic"), torch.randn(5, 2, dtype=torch.float64)
    ys = boot.fixed_point(counting, eps, schedule=schedule, grid=grid, order=2)
    assert calls == [5] * 11, "6 Heun steps: 2 calls each, 1 on the last"
    table = schedule.coefficients(grid)
    y_1 = ys[1]
    both = boot.teacher_step(mixture, y_1, eps, None, t=grid[1].expand(5), s=grid[0].expand(5),
                              at_t=[c[1].expand(5) for c in table], at_s=[c[0].expand(5) for c in table], order=2)
    assert torch.equal(ys[0], both), "the one-call last step is the two-call step's answer"
    student = boot.MLPStudent(dim=2, width=8).double()
    for j in (1, 3):
        calls.clear()
        boot.sample_any_t(student, counting, eps, schedule=schedule, grid=grid, j=j, order=2)
        assert len(calls) == 2 * j - 1, j
    calls.clear()
    off_zero = grid[1:]  # a grid that stops short of t = 0: its last step is a full Heun step
    boot.fixed_point(counting, eps, schedule=schedule, grid=off_zero, order=2)
    assert len(calls) == 2 * (len(off_zero) - 1)


# --- the distribution corrector (BOOT.md section 10) --------------------------------------------------


def _linear_generator(dim=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, dim).double()


@pytest.mark.parametrize("name", sorted(EVERY))
def test_corrector_is_exactly_zero_when_the_fake_is_the_teacher(name):
    schedule = EVERY[name]()
    g = _linear_generator()
    teacher = exact.MixtureTeacher(torch.tensor([[0.5, -0.2, 0.1], [-0.4, 0.3, 0.0]]), 0.3, 1.0, schedule)
    twin = exact.MixtureTeacher(torch.tensor([[0.5, -0.2, 0.1], [-0.4, 0.3, 0.0]]), 0.3, 1.0, schedule)
    gen = torch.Generator().manual_seed(1)
    x = g(torch.randn(64, 3, generator=gen, dtype=torch.float64))
    t = boot.random_times(schedule, 64, lo=0.02, hi=0.98, generator=gen)
    loss, logs = boot.corrector_loss(x, teacher, twin, torch.randn(64, 3, generator=gen, dtype=torch.float64),
                                     schedule=schedule, t=t)
    loss.backward()
    assert loss.item() == 0 and logs["corrector_grad"].item() == 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in g.parameters())


def test_corrector_gradient_is_its_formula_through_the_network():
    schedule = boot.Schedule.cosine()
    g = _linear_generator()
    teacher = exact.MixtureTeacher(torch.zeros(1, 3), 0.5, 1.0, schedule)
    fake = exact.MixtureTeacher(torch.full((1, 3), 0.3), 0.8, 1.0, schedule)
    gen = torch.Generator().manual_seed(2)
    eps, noise = (torch.randn(16, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    t = torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    x = g(eps)
    loss, _ = boot.corrector_loss(x, teacher, fake, noise, schedule=schedule, t=t)
    (dx,) = torch.autograd.grad(loss, x, retain_graph=True)
    alpha, sigma, _ = schedule.coefficients(t)
    x_t = alpha[:, None] * x.detach() + sigma[:, None] * noise  # by hand
    f_real, f_fake = teacher(x_t, t.float()), fake(x_t, t.float())
    grad = (f_fake - f_real) / (x.detach() - f_real).abs().mean(1, keepdim=True)
    assert torch.allclose(dx, grad / x.numel(), rtol=1e-6, atol=0)  # the square is taken in float32
    assert loss.item() == pytest.approx(0.5 * grad.pow(2).mean().item(), rel=1e-6)
    loss.backward()  # and on the weights, the chain rule through x = W eps + b
    assert torch.allclose(g.weight.grad, (grad / x.numel()).T @ eps, rtol=1e-6, atol=0)
    assert torch.allclose(g.bias.grad, (grad / x.numel()).sum(0), rtol=1e-6, atol=0)


def _gaussian_denoiser(mean, std, schedule):
    return exact.MixtureTeacher(torch.full((1, 1), mean), std, 1.0, schedule)


@torch_settings
@given(name=st.sampled_from(sorted(EVERY)), mean=st.floats(-1, 1), std=st.floats(0.2, 1.0),
       shift=st.floats(0.2, 1.0), widen=st.floats(1.3, 2.0), seed=st.integers(0, 2 ** 16))
def test_corrector_moves_samples_towards_the_teachers_distribution_and_not_once_there(name, mean, std, shift, widen, seed):
    """A student whose samples follow N(m_s, s_s^2), its fake the exact denoiser of that distribution, the teacher of
    N(m, s^2): exactly zero when they agree; else, in expectation, a descent step moves the samples' mean towards m
    and shrinks a spread wider than s."""
    schedule = EVERY[name]()
    teacher = _gaussian_denoiser(mean, std, schedule)
    gen = torch.Generator().manual_seed(seed)
    z, noise = (torch.randn(4096, 1, generator=gen, dtype=torch.float64) for _ in range(2))
    t = boot.random_times(schedule, 4096, lo=0.02, hi=0.98, generator=gen)

    def step(m_s, s_s):  # d loss / dx, times numel: the corrector's grad per sample
        x = (m_s + s_s * z).requires_grad_(True)
        loss, _ = boot.corrector_loss(x, teacher, _gaussian_denoiser(m_s, s_s, schedule), noise, schedule=schedule, t=t)
        return torch.autograd.grad(loss, x)[0] * x.numel(), x.detach()

    same, _ = step(mean, std)
    assert torch.count_nonzero(same) == 0
    off, _ = step(mean + shift, std)
    # Each sample's sign, except where EDM's sigma_t is ~1e-10 and float32 rounding outweighs the difference.
    assert off.mean() > 0 and (off > 0).double().mean() > 0.9, "descent lowers samples whose mean is above the teacher's"
    wide, x = step(mean, widen * std)
    assert ((x - mean) * wide).mean() > 0, "descent pulls a too-wide spread towards the teacher's"


@pytest.mark.parametrize("name, kind", [("linear", "epsilon"), ("cosine", "v_prediction"), ("discrete", "epsilon"),
                                        ("cosine", "sample"), ("flow", "flow_prediction"), ("edm", "sample")])
def test_fake_loss_is_the_teachers_own_training_loss_in_its_parameterisation(name, kind):
    """A network that predicts the exact target from_x0(x) of its own parameterisation has loss 0 and, wrapped as a
    denoiser, returns the sample; off by 0.1 it has loss 0.01."""
    schedule = SCHEDULES.get(name, FAMILIES.get(name))()
    gen = torch.Generator().manual_seed(3)
    x, noise = (torch.randn(32, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    t = boot.random_times(schedule, 32, generator=gen)
    if schedule.train_steps:
        assert ((t * schedule.train_steps).round() == t * schedule.train_steps).all() and t.min() > 0
    alpha, sigma, _ = (c[:, None] for c in schedule.coefficients(t))
    target = {"epsilon": noise, "v_prediction": alpha * noise - sigma * x, "sample": x, "flow_prediction": noise - x}[kind]

    def oracle(offset):
        return lambda x_t, time, cond=None: target + offset
    assert boot.fake_loss(oracle(0.0), x, noise, schedule=schedule, prediction=kind, t=t).item() == pytest.approx(0, abs=1e-20)
    assert boot.fake_loss(oracle(0.1), x, noise, schedule=schedule, prediction=kind, t=t).item() == pytest.approx(0.01, rel=1e-6)
    x_t = boot.noised(x, noise, schedule=schedule, t=t)
    assert torch.allclose(x_t, alpha * x + sigma * noise, rtol=0, atol=0)
    recovered = boot.denoiser(oracle(0.0), schedule, prediction=kind)(x_t, t.float())
    assert torch.allclose(recovered, x, atol=1e-9)
