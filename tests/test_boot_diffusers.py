"""Tests of boot_diffusers.py: the teacher boot reads from a diffusers scheduler config is the one diffusers runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub

import pytest
import torch

import boot
from bootkit import pixel
import boot_diffusers

diffusers = pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]  # the repository: its scripts, prompts.txt, teachers/
STEPS = 100  # training timesteps of the tiny teachers


def _save_teacher(folder: Path, **scheduler_config):
    """A random 8x8 UNet2DModel and a DDPM scheduler config with these settings, in DDPMPipeline's layout."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=STEPS, **scheduler_config)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return str(folder)


def _diffusers_ddim(unet, config, eps, steps):
    """diffusers' own DDIM: trailing spacing, set_alpha_to_one, eta 0, the clipped x0's eps (see boot_diffusers)."""
    scheduler = diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    x = eps
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


@pytest.mark.parametrize("config", [
    dict(prediction_type="epsilon", clip_sample=False),
    dict(prediction_type="epsilon", clip_sample=True),
    dict(prediction_type="epsilon", clip_sample=True, clip_sample_range=0.5),
    dict(prediction_type="v_prediction", clip_sample=False),
    dict(prediction_type="v_prediction", clip_sample=True),
    dict(prediction_type="sample", clip_sample=False),
    dict(prediction_type="sample", clip_sample=True),
    dict(prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
    dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False),
    dict(prediction_type="sample", rescale_betas_zero_snr=True, clip_sample=True),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_pixel_adapter_under_boot_ddim_is_diffusers_ddim(tmp_path, config, steps):
    folder = _save_teacher(tmp_path / "teacher", **config)
    unet, read = pixel.load_pixel_teacher(folder, "cpu")
    teacher = pixel.pixel_teacher(unet, read)
    eps = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = boot.ddim_sample(teacher, eps, schedule=read.schedule, steps=steps)
        theirs = _diffusers_ddim(unet, read.scheduler.config, eps, steps)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


# --- flow matching and EDM teachers: boot's sampler on the scheduler's own steps is the scheduler's own loop ------


def _save_family_teacher(folder: Path, scheduler):
    """A random 8x8 UNet2DModel beside a flow or EDM scheduler, in the pipeline layout (unet/, scheduler/)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return str(folder)


def _diffusers_flow(unet, scheduler, eps):
    """FlowMatchEulerDiscreteScheduler's own loop from x_T = eps: the network's velocity at timestep 1000 sigma."""
    x = eps
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def _diffusers_edm(unet, scheduler, eps):
    """EDMEulerScheduler's own loop, as diffusers' Cosmos pipelines run it, from x_T = sigma_max eps: the UNet reads
    scale_model_input(x) = c_in x at timestep c_noise, step() preconditions its output into D and takes Euler's step."""
    x = scheduler.config.sigma_max * eps
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


FAMILY_CASES = {
    "flow shift 1": (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0), _diffusers_flow),
    "flow shift 3": (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), _diffusers_flow),
    "edm eps": (lambda: diffusers.EDMEulerScheduler(), _diffusers_edm),
    "edm v": (lambda: diffusers.EDMEulerScheduler(prediction_type="v_prediction"), _diffusers_edm),
    "edm exponential sigmas": (lambda: diffusers.EDMEulerScheduler(sigma_schedule="exponential"), _diffusers_edm),
}


@pytest.mark.parametrize("case", FAMILY_CASES)
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_flow_and_edm_teachers_under_boot_are_the_schedulers_own_loop(tmp_path, case, steps):
    if case == "edm exponential sigmas" and steps == 1:
        pytest.skip("diffusers' one-step exponential schedule is sigma_min alone: it never starts at sigma_max")
    make, loop = FAMILY_CASES[case]
    folder = _save_family_teacher(tmp_path / "teacher", make())
    unet, read = pixel.load_pixel_teacher(folder, "cpu")
    assert read.family == ("flow" if case.startswith("flow") else "edm")
    teacher = pixel.pixel_teacher(unet, read)
    scheduler = make()
    scheduler.set_timesteps(steps)
    grid = boot_diffusers.sampler_grid(read, scheduler)
    assert len(grid) == steps + 1 and grid[0] == 0 and grid[-1] == 1 and (grid[1:] > grid[:-1]).all()
    _, sigma, _ = read.schedule.coefficients(grid.flip(0))
    assert torch.allclose(sigma.float(), scheduler.sigmas, rtol=1e-6, atol=0), "the same noise levels"
    eps = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = loop(unet, scheduler, eps)
        ours = boot.ddim_sample(teacher, eps, schedule=read.schedule, grid=grid)
        signal = boot.fixed_point(teacher, eps, schedule=read.schedule, grid=grid)[0]  # what a perfect student returns
    assert torch.isfinite(ours).all() and theirs.abs().max() > 0.1
    slack = 0.0
    if read.family == "edm" and steps == 1:
        # diffusers' one step from sigma_max is x_T + (0 - sigma_max) (x_T - D) / sigma_max in fp32, rounded at |x_T|
        # (up to 4 sigma_max = 320: ulp 3e-5); boot's DDIM step lands on D itself. Ours is the float64 loop to 1e-6.
        with torch.no_grad():
            exact64 = boot.ddim_sample(pixel.pixel_teacher(unet.double(), read), eps.double(), schedule=read.schedule, grid=grid)
        unet.float()
        assert torch.allclose(ours.double(), exact64, atol=1e-6, rtol=0), (ours - exact64).abs().max()
        slack = 2 * torch.finfo(torch.float32).eps * read.schedule.coefficients(grid[-1:])[1].item() * eps.abs().max().item()
    assert torch.allclose(ours, theirs, atol=1e-5 + slack, rtol=1e-5), (ours - theirs).abs().max()
    assert torch.allclose(signal, theirs, atol=1e-5 + slack, rtol=1e-5), (signal - theirs).abs().max()


def test_edm_teacher_is_the_preconditioned_denoiser_of_diffusers():
    scheduler = diffusers.EDMEulerScheduler(sigma_data=0.7)
    read = boot_diffusers.scheduler_from_config({**scheduler.config, "_class_name": "EDMEulerScheduler"})
    net = lambda x, timestep: torch.tanh(x) + timestep[:, None, None, None]
    t = torch.tensor([0.3, 0.9, 1.0], dtype=torch.float64)
    sigma = read.schedule.coefficients(t)[1].float()
    c_in, timestep, c_skip, c_out = read.unet_inputs(t)
    x = torch.randn(3, 2, 4, 4)
    ours = c_skip[:, None, None, None] * x + c_out[:, None, None, None] * net(c_in[:, None, None, None] * x, timestep)
    for i in range(3):
        raw = net(scheduler.precondition_inputs(x[i:i + 1], sigma[i]), scheduler.precondition_noise(sigma[i:i + 1]))
        theirs = scheduler.precondition_outputs(x[i:i + 1], raw, sigma[i])
        assert torch.allclose(ours[i:i + 1], theirs, atol=1e-6), i
    assert torch.allclose(timestep, torch.log(sigma) / 4) and read.prediction == "sample"


def test_clipping_acts_on_x0_and_is_really_applied(tmp_path):
    folder = _save_teacher(tmp_path / "teacher", prediction_type="epsilon", clip_sample=True)
    unet, read = pixel.load_pixel_teacher(folder, "cpu")
    x, t = torch.randn(2, 3, 8, 8), torch.ones(2)
    with torch.no_grad():
        x0 = pixel.pixel_teacher(unet, read)(x, t)
        raw = boot.denoiser(pixel.DiffusersNet(unet), read.schedule, prediction="epsilon")(x, t)
    assert raw.abs().max() > 1 and x0.abs().max() <= 1 and torch.equal(x0, raw.clamp(-1, 1))


def test_dynamic_threshold_matches_diffusers():
    scheduler = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = boot_diffusers.dynamic_threshold(x0, ratio=0.9, max_value=2.0)
    assert torch.equal(ours, scheduler._threshold_sample(x0))


def _config(**overrides):
    """A DDPM config as saved (without the in-memory list of defaulted keys, which from_config would reapply)."""
    config = dict(diffusers.DDPMScheduler(num_train_timesteps=STEPS).config)
    config.pop("_use_default_values", None)
    return {**config, **overrides}


@pytest.mark.parametrize("config, words", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "not a variance-preserving discrete-time schedule, nor one of the "
                                             "flow-matching and EDM schedulers boot reads"),
    ({"_class_name": "FlowMatchHeunDiscreteScheduler"}, "nor one of the flow-matching and EDM schedulers"),
    ({"_class_name": "EDMDPMSolverMultistepScheduler"}, "nor one of the flow-matching and EDM schedulers"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, "use_dynamic_shifting=True "
                                                                                        "shifts its sigmas by the image size"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True}, "samples stochastically"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}, "shift_terminal=0.1 stretches"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, "invert_sigmas=True inverts"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({"_class_name": "EDMEulerScheduler", "final_sigmas_type": "sigma_min"}, "ends at sigma_min, not at the data"),
    ({"_class_name": "EDMEulerScheduler", "prediction_type": "sample"}, "defined for epsilon and v_prediction only"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 0.0}, "FlowMatchEulerDiscreteScheduler: shift must be "
                                                                        "positive"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": -1.0}, "shift must be positive"),
    ({"_class_name": "EDMEulerScheduler", "rho": -7.0}, "EDMEulerScheduler: rho must be positive"),
    ({"_class_name": "EDMEulerScheduler", "sigma_max": 0.0}, "sigma_max must be positive"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "not a discrete-time teacher"),
    ({"beta_schedule": "cubic"}, "cubic is not implemented"),
    ({"_class_name": "NoSuchScheduler"}, "unknown scheduler class 'NoSuchScheduler'"),
    ({"prediction_type": "flow"}, "unsupported prediction type 'flow'"),
    ({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"},
     "unsupported prediction type 'flow_prediction'; boot reads epsilon, v_prediction, sample of a variance-preserving"),
    ({"rescale_betas_zero_snr": True}, "zero terminal SNR with eps-prediction"),
    ({"_class_name": "EulerDiscreteScheduler", "rescale_betas_zero_snr": True}, "zero terminal SNR with eps-prediction"),
], ids=lambda v: str(v)[:40])
def test_schedules_boot_cannot_distil_exactly_are_refused_by_name(config, words):
    with pytest.raises(boot_diffusers.UnsupportedTeacher, match=words.replace("(", r"\(")):
        boot_diffusers.scheduler_from_config(_config(**config), what="--teacher x")


@pytest.mark.parametrize("name", ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_schedulers_of_the_same_family_give_the_same_schedule(name):
    config = _config(_class_name=name, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    read = boot_diffusers.scheduler_from_config(config)
    expected = diffusers.DDPMScheduler.from_config(config).alphas_cumprod.double()
    alpha, _, _ = read.schedule.coefficients(torch.arange(1, STEPS + 1, dtype=torch.float64) / STEPS)
    assert torch.allclose(alpha ** 2, expected, rtol=1e-12, atol=0)


def test_clipping_follows_the_schedulers_own_defaults():
    """PNDM has no clip_sample (SD's configs): no clipping; DDPM's default clips to [-1, 1]."""
    assert boot_diffusers.scheduler_from_config(_config(_class_name="PNDMScheduler")).clip is None
    ddpm = {k: v for k, v in _config().items() if k != "clip_sample"}
    assert boot_diffusers.scheduler_from_config(ddpm).clip is not None


def test_a_hub_teacher_out_of_reach_says_so():
    """HF_HUB_OFFLINE=1 and nothing cached: the cause, in train_toy's teacher and in read_scheduler (train_sd's)."""
    from bootkit.runtime import UsageError
    said = "the hub could not be reached (HF_HUB_OFFLINE is set) and nothing of it is cached; pass a local folder"
    with pytest.raises(UsageError) as refused:
        pixel.load_pixel_teacher("nobody/no-such-model", "cpu")
    assert str(refused.value).startswith(f"--teacher 'nobody/no-such-model': {said}")
    with pytest.raises(boot_diffusers.UnsupportedTeacher) as refused:
        boot_diffusers.read_scheduler("nobody/no-such-model", subfolder="scheduler", what="--teacher x")
    assert str(refused.value).startswith(f"--teacher x: {said}")
    assert boot_diffusers.hub_unreachable(OSError("no file named config.json")) is None  # any other failure: its own words


def test_bad_scheduler_config_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    folder = Path(_save_teacher(tmp_path / "teacher"))
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": "ScoreSdeVeScheduler"}))
    done = subprocess.run([sys.executable, str(ROOT / "train_toy.py"), "--teacher", str(folder), "--out",
                           str(tmp_path / "run"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "ScoreSdeVeScheduler is not a variance-preserving" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, family", [("FlowMatchEulerDiscreteScheduler", "flow-matching"), ("EDMEulerScheduler", "EDM")])
def test_train_sd_refuses_a_flow_matching_or_edm_unet_in_one_line(tmp_path, name, family):
    """Flow matching is read in SD3's layout (a transformer); a UNet with a flow or EDM scheduler is refused."""
    import test_train_sd
    root = tmp_path / "sd"
    test_train_sd.make_tiny_sd(root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": name}))
    (tmp_path / "prompts.txt").write_text("a cat\n")
    done = subprocess.run([sys.executable, str(ROOT / "train_sd.py"), "--teacher", str(root), "--prompts",
                           str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "run"), "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"{name} is a {family} teacher with a UNet; train_sd.py reads flow matching in SD3's layout (a " \
           "transformer) only" in done.stderr
    assert not (tmp_path / "run").exists()
