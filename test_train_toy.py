"""Tests of train_toy.py, offline on the CPU: tiny runs of every teacher kind, its outputs, and bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import boot
import train_toy

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
TINY = ["--steps", "20", "--batch-size", "64", "--width", "32", "--depth", "2", "--eval-samples", "128",
        "--reference-steps", "64", "--device", "cpu", "--warmup", "2"]


def run_cli(*args):
    done = subprocess.run([sys.executable, str(HERE / "train_toy.py"), *map(str, args)], cwd=HERE, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mixture"
    train_toy.main(["--out", str(out), "--ema", "0.9", *TINY])
    return out


def test_2d_run_writes_metrics_samples_pictures_and_student(mixture_run):
    m = json.loads((mixture_run / "metrics.json").read_text())
    assert set(m["teacher_ddim_rmse"]) == {"1", "2", "4", "8", "16", "32", "64"}
    assert m["student_rmse"] > 0 and m["effective_nfe"] > 0 and m["samples_per_s"]["student"] > 0
    curve = {int(k): v for k, v in m["teacher_ddim_rmse"].items()}
    assert curve[64] < curve[8] < curve[1], "the teacher's own DDIM converges to its reference"
    assert 0 <= m["within_3_std"]["data"] <= 1 and len(m["mode_share"]["student"]) == 8
    arrays = np.load(mixture_run / "samples.npz")
    assert {k: arrays[k].shape for k in arrays} == {k: (128, 2) for k in ("noise", "student", "teacher", "data")}
    # The stored samples are the student's one call and the teacher's DDIM from the stored noise.
    student = boot.MLPStudent(dim=2, width=32, depth=2)
    student.load_state_dict(load_file(mixture_run / "student.safetensors"))
    noise = torch.from_numpy(arrays["noise"])
    assert torch.allclose(boot.sample_student(student, noise), torch.from_numpy(arrays["student"]), atol=1e-5)
    assert (mixture_run / "samples.png").stat().st_size > 10_000 and (mixture_run / "log.jsonl").exists()
    assert runtime_checkpoint_step(mixture_run) == 20


def runtime_checkpoint_step(out):
    import runtime
    _, _, state = runtime.latest_checkpoint(out)
    return state["step"]


def test_a_second_run_into_the_same_folder_is_refused_and_nothing_is_touched(mixture_run):
    before = (mixture_run / "metrics.json").read_bytes()
    code, _, err = run_cli("--out", mixture_run, *TINY)
    assert code == 2 and err.strip().count("\n") == 0 and "--resume" in err and "Traceback" not in err
    assert (mixture_run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("data", ["unequal", "checkerboard", "spiral", "digits"])
def test_every_exact_teacher_runs(tmp_path, data):
    train_toy.main(["--data", data, "--out", str(tmp_path / data), *TINY])
    m = json.loads((tmp_path / data / "metrics.json").read_text())
    assert m["rmse"] == ("per-pixel" if data == "digits" else "per-sample (Euclidean)")
    assert len(m["mode_share"]["data"]) == (10 if data == "digits" else {"unequal": 6, "checkerboard": 8, "spiral": 2}[data])
    assert m["energy_distance"]["student"] > 0
    finite = data in ("checkerboard", "spiral", "digits")  # points, not a mixture: "same_point" applies
    assert ("same_point" in m) == finite and ("within_3_std" in m) != finite
    assert not finite or all(0 <= v <= 1 for v in m["same_point"].values())


@pytest.mark.parametrize("args, message", [
    (["--data", "moons"], "unknown exact teacher 'moons'"),
    (["--steps", "0"], "--steps: must be positive"),
    (["--batch-size", "-3"], "--batch-size: must be positive"),
    (["--jump", "9", "--bootstrap-steps", "8"], "--jump: at most --bootstrap-steps"),
    (["--ema", "1.5"], "--ema: must be in [0, 1)"),
    (["--device", "cuda:0"], "no CUDA device"),
])
def test_bad_flags_get_one_line_and_write_nothing(tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli("--out", tmp_path / "run", *TINY, *args)
    assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    code, _, err = run_cli("--teacher", tmp_path / "not-a-model", "--out", tmp_path / "run", *TINY)
    assert code == 2 and "is not a loadable diffusers UNet2DModel" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


# --- diffusers pixel teachers --------------------------------------------------------------------------


def _tiny_ddpm(folder: Path, prediction: str, flat: bool):
    """A random UNet2DModel and its scheduler: the pipeline layout (unet/, scheduler/), or the flat one of
    google/ddpm-cifar10-32 (config.json beside scheduler_config.json)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction)
    if flat:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    else:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet, scheduler


@pytest.mark.parametrize("prediction, flat, init", [("epsilon", True, False), ("v_prediction", False, True)])
def test_pixel_teacher_from_a_diffusers_folder(tmp_path, prediction, flat, init):
    _tiny_ddpm(tmp_path / "ddpm", prediction, flat)
    out = tmp_path / "run"
    args = ["--teacher", str(tmp_path / "ddpm"), "--out", str(out), "--bootstrap-steps", "10", "--jump", "2", *TINY,
            "--width", "16", "--eval-samples", "16", "--steps", "4", "--batch-size", "4"]
    train_toy.main(args + (["--init-from-teacher"] if init else []))
    m = json.loads((out / "metrics.json").read_text())
    assert m["rmse"] == "per-pixel" and m["reference"] == "teacher DDIM-64 from the same noise"
    from PIL import Image
    grid = Image.open(out / "samples.png")
    assert grid.size == (8 * 8 * 4, 4 * 8 * 4), "8 noises; rows: student, teacher DDIM-1, 4, 16; enlarged 4x"


def test_pixel_teacher_is_called_at_its_training_timesteps_with_its_own_conversion(tmp_path):
    unet, scheduler = _tiny_ddpm(tmp_path / "ddpm", "v_prediction", flat=False)
    loaded, read = train_toy.load_pixel_teacher(str(tmp_path / "ddpm"), "cpu")
    schedule = read.schedule
    teacher = boot.denoiser(train_toy.DiffusersNet(loaded), schedule, prediction="v_prediction")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 1.0])
    alpha, sigma, _ = schedule.coefficients(t)
    v = unet(x, torch.tensor([49, 99])).sample
    expected = alpha.view(2, 1, 1, 1) * x - sigma.view(2, 1, 1, 1) * v
    assert torch.allclose(teacher(x, t, None), expected, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_student_from_the_teacher_starts_as_the_teacher_read_at_lambda_zero_for_every_t(tmp_path, prediction):
    _tiny_ddpm(tmp_path / "ddpm", prediction, flat=False)
    args = train_toy.parse_args(["--teacher", str(tmp_path / "ddpm"), "--init-from-teacher", "--out", str(tmp_path / "r")])
    teacher, schedule, student, shape, _ = train_toy.build(args, "cpu")
    anchor = student.net.timestep.item()
    t_a = torch.tensor([(anchor + 1) / schedule.train_steps] * 4)
    alpha, sigma, lam = schedule.coefficients(t_a.double())
    assert abs(lam[0].item()) < 0.05 and abs(sigma[0] / alpha[0] - 1) < 0.05, "the conversion's gain is 1"
    eps = torch.randn(4, *shape)
    unet, _ = train_toy.load_pixel_teacher(str(tmp_path / "ddpm"), "cpu")
    raw = boot.denoiser(train_toy.DiffusersNet(unet), schedule, prediction=prediction)  # the teacher, unclipped
    with torch.no_grad():
        expected = raw(eps, t_a, None)
        for t in (0.0, 0.3, 0.9):
            assert torch.allclose(student(eps, torch.full((4,), t)), expected, atol=1e-5)
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=boot.time_grid(schedule, 4))
    loss.backward()
    embedding = student.net.unet.class_embedding.linear_2.weight
    assert embedding.grad.abs().sum() > 0, "the student's time reaches it through the zero-initialised embedding"
