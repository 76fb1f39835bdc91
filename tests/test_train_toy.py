"""Tests of train_toy.py, offline on the CPU: tiny runs of every teacher kind, its outputs, and bad input."""
import contextlib
import io
import json
import os
import shutil
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
from bootkit import evaluation, exact, metrics, pictures, pixel, runtime, toy
import train_toy

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the repository: its scripts, prompts.txt, teachers/
PIXEL_TINY = ["--steps", "20", "--batch-size", "64", "--eval-samples", "128", "--reference-steps", "64", "--device",
              "cpu", "--warmup", "2"]
TINY = PIXEL_TINY + ["--width", "32", "--depth", "2"]  # pixel students from the teacher take no width or depth


def run_cli(*args):
    done = subprocess.run([sys.executable, str(ROOT / "train_toy.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mixture"
    train_toy.main(["--out", str(out), "--ema", "0.9", *TINY])
    return out


def test_2d_run_writes_metrics_samples_pictures_and_student(mixture_run):
    m = json.loads((mixture_run / "metrics.json").read_text())
    assert set(m["teacher_ddim_rmse"]) == {"1", "2", "4", "8", "16", "32"}, "k below the reference's 64 steps"
    assert m["student_rmse"] > 0 and m["effective_nfe"] > 0 and m["samples_per_s"]["student"] > 0
    curve = {int(k): v for k, v in m["teacher_ddim_rmse"].items()}
    assert curve[32] < curve[8] < curve[1], "the teacher's own DDIM converges to its reference"
    assert 0 <= m["within_3_std"]["data"] <= 1 and len(m["mode_share"]["student"]) == 8
    arrays = np.load(mixture_run / "samples.npz")
    keys = ("noise", "student", "teacher", "data", *(f"ddim_{k}" for k in (1, 2, 4, 8, 16, 32)))
    assert {k: arrays[k].shape for k in arrays} == {k: (128, 2) for k in keys}
    # The stored samples are the student's one call and the teacher's DDIM from the stored noise.
    student = boot.MLPStudent(dim=2, width=32, depth=2)
    student.load_state_dict(load_file(mixture_run / "student.safetensors"))
    noise = torch.from_numpy(arrays["noise"])
    assert torch.allclose(boot.sample_student(student, noise), torch.from_numpy(arrays["student"]), atol=1e-5)
    assert (mixture_run / "samples.png").stat().st_size > 10_000 and (mixture_run / "log.jsonl").exists()
    assert runtime_checkpoint_step(mixture_run) == 20
    # Any-t sampling on the student's grid (N = 8, Heun): 2 j calls (1 student, 2 j - 1 teacher: the last step makes one);
    # more teacher steps, closer to the teacher.
    assert [(r["teacher_steps"], r["calls"]) for r in m["any_t"]] == [(1, 2), (2, 4), (4, 8)]
    assert m["any_t"][-1]["rmse"] < m["student_rmse"] and all(r["effective_nfe"] > 0 for r in m["any_t"])
    # The error map on the training grid (N = 8), on every noise of an exact teacher, beside samples.png.
    e = m["error_map"]
    assert e["t"] == boot.time_grid(boot.Schedule.cosine(), 8, spacing="quadratic").tolist() and e["noises"] == 128
    assert len(e["to_fixed_point"]) == len(e["one_hop"]) == 9 and e["one_hop"][0] is None and e["order"] == 2
    assert e["to_fixed_point"][8] == 0 and all(v > 0 for v in e["to_fixed_point"][:8] + e["one_hop"][1:])
    schedule = boot.Schedule.cosine()
    heun_8 = boot.fixed_point(exact.toy_teacher("mixture", schedule), noise, schedule=schedule,
                              grid=boot.time_grid(schedule, 8, spacing="quadratic"), order=2)[0]
    assert e["to_fixed_point"][0] == pytest.approx(metrics.rmse(torch.from_numpy(arrays["student"]), heun_8), rel=1e-4), \
        "at t_0: the sample against the teacher's N-step sampler of the training's order"
    assert e["rmse"] == m["rmse"] and (mixture_run / "error_map.png").stat().st_size > 10_000


def runtime_checkpoint_step(out):
    from bootkit import runtime
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
    n = 16 if data == "digits" else 8  # the default N of each kind
    assert len(m["error_map"]["to_fixed_point"]) == n + 1 and m["error_map"]["rmse"] == m["rmse"]
    assert (tmp_path / data / "error_map.png").exists()


@pytest.mark.parametrize("schedule", ["flow", "edm"])
def test_exact_teachers_run_on_flow_and_edm_schedules(tmp_path, schedule):
    train_toy.main(["--schedule", schedule, "--out", str(tmp_path / schedule), *TINY])
    m = json.loads((tmp_path / schedule / "metrics.json").read_text())
    curve = {int(k): v for k, v in m["teacher_ddim_rmse"].items()}
    assert curve[32] < curve[4] < curve[1] and np.isfinite(m["student_rmse"]) and m["config"]["schedule"] == schedule
    assert m["config"]["spacing"] == ("t" if schedule == "edm" else "quadratic"), "EDM's t is Karras' spacing already"


@pytest.mark.parametrize("args, message", [
    (["--data", "moons"], "unknown exact teacher 'moons'"),
    (["--steps", "0"], "--steps: must be positive"),
    (["--batch-size", "-3"], "--batch-size: must be positive"),
    (["--jump", "9", "--bootstrap-steps", "8"], "--jump: at most --bootstrap-steps"),
    (["--ema", "1.5"], "--ema: must be in [0, 1)"),
    (["--device", "cuda:0"], "no CUDA device"),
    (["--reference-steps", "2"], "--reference-steps: at least 3"),
    (["--judge", "somewhere"], "--judge: needs a pixel --teacher"),
    (["--init-from-teacher"], "--init-from-teacher: needs a pixel --teacher"),
    (["--teacher", "t", "--width", "32"], "--width: the student from the teacher has the teacher's architecture"),
    (["--corrector-weight", "1"], "--corrector-weight: needs a pixel --teacher"),
    (["--teacher", "t", "--no-init-from-teacher", "--corrector-weight", "-1"], "--corrector-weight: must be 0 or more"),
    (["--teacher", "t", "--no-init-from-teacher", "--corrector-start", "-5"], "--corrector-start: must be 0 or more"),
])
def test_bad_flags_get_one_line_and_write_nothing(tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli("--out", tmp_path / "run", *TINY, *args)
    assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--bootstrap-steps", "2000"], "--bootstrap-steps 2000: grid steps must be at least 1 and at most 1000"),
    (["--bootstrap-steps", "600", "--spacing", "quadratic"],
     "--bootstrap-steps 600: 600 quadratic-spaced steps collide on the teacher's 1000 timesteps"),
])
def test_a_grid_the_teachers_timesteps_cannot_hold_gets_one_line_and_writes_nothing(tmp_path, args, message):
    code, _, err = run_cli("--teacher", ROOT / "teachers/mnist16", "--out", tmp_path / "run", *PIXEL_TINY, *args)
    assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    code, _, err = run_cli("--teacher", tmp_path / "not-a-model", "--out", tmp_path / "run", *PIXEL_TINY)
    assert code == 2 and "is not a loadable diffusers UNet2DModel" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


# --- diffusers pixel teachers --------------------------------------------------------------------------


def _tiny_ddpm(folder: Path, prediction: str, flat: bool, channels=3, size=8):
    """A random UNet2DModel and its scheduler: the pipeline layout (unet/, scheduler/), or the flat one of
    google/ddpm-cifar10-32 (config.json beside scheduler_config.json)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(16, 32), layers_per_block=1,
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
    args = ["--teacher", str(tmp_path / "ddpm"), "--out", str(out), "--bootstrap-steps", "10", "--jump", "2",
            *PIXEL_TINY, "--eval-samples", "16", "--steps", "4", "--batch-size", "4"]
    train_toy.main(args + ([] if init else ["--no-init-from-teacher", "--width", "16"]))  # on by default for pixel teachers
    m = json.loads((out / "metrics.json").read_text())
    assert m["rmse"] == "per-pixel" and m["reference"] == "teacher DDIM-64 from the same noise"
    from PIL import Image
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    # student, DDIM-1, 4, 16, reference and the corrector's fake network (on in the pixel default)
    size, boxes = pictures.layout(8, 8, 6, 8, title=True, col_labels=True)
    assert grid.shape[1::-1] == size and size[0] >= pictures.MIN_WIDTH, "8 noises a row, labelled, at least 400 px"
    arrays = np.load(out / "samples.npz")
    for row, key in ((0, "student"), (4, "teacher")):  # each cell the image of its noise, enlarged nearest-neighbour
        for noise, (x0, y0, x1, y1) in enumerate(boxes[row]):
            zoom = (x1 - x0) // 8
            assert zoom >= 4
            pixels = np.round((np.clip(arrays[key][noise], -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)
            np.testing.assert_array_equal(grid[y0:y1:zoom, x0:x1:zoom], pixels.transpose(1, 2, 0))


def test_pixel_teacher_is_called_at_its_training_timesteps_with_its_own_conversion(tmp_path):
    unet, scheduler = _tiny_ddpm(tmp_path / "ddpm", "v_prediction", flat=False)
    loaded, read = pixel.load_pixel_teacher(str(tmp_path / "ddpm"), "cpu")
    schedule = read.schedule
    teacher = boot.denoiser(pixel.DiffusersNet(loaded), schedule, prediction="v_prediction")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 1.0])
    alpha, sigma, _ = schedule.coefficients(t)
    v = unet(x, torch.tensor([49, 99])).sample
    expected = alpha.view(2, 1, 1, 1) * x - sigma.view(2, 1, 1, 1) * v
    assert torch.allclose(teacher(x, t, None), expected, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_student_from_the_teacher_starts_as_the_teacher_read_at_lambda_zero_for_every_t(tmp_path, prediction):
    _tiny_ddpm(tmp_path / "ddpm", prediction, flat=False)
    args = toy.parse_args(["--teacher", str(tmp_path / "ddpm"), "--out", str(tmp_path / "r"), "--bootstrap-steps", "8"])
    assert args.init_from_teacher, "the pixel default"
    teacher, schedule, student, shape, _ = toy.build(args, "cpu")
    anchor = student.net.timestep.item()
    t_a = torch.tensor([(anchor + 1) / schedule.train_steps] * 4)
    alpha, sigma, lam = schedule.coefficients(t_a.double())
    assert abs(lam[0].item()) < 0.05 and abs(sigma[0] / alpha[0] - 1) < 0.05, "the conversion's gain is 1"
    eps = torch.randn(4, *shape)
    unet, _ = pixel.load_pixel_teacher(str(tmp_path / "ddpm"), "cpu")
    raw = boot.denoiser(pixel.DiffusersNet(unet), schedule, prediction=prediction)  # the teacher, unclipped
    with torch.no_grad():
        expected = raw(eps, t_a, None)
        for t in (0.0, 0.3, 0.9):
            assert torch.allclose(student(eps, torch.full((4,), t)), expected, atol=1e-5)
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=boot.time_grid(schedule, 4))
    loss.backward()
    embedding = student.net.unet.class_embedding.linear_2.weight
    assert embedding.grad.abs().sum() > 0, "the student's time reaches it through the zero-initialised embedding"


# --- flow-matching and EDM pixel teachers ----------------------------------------------------------------


def _tiny_family(folder: Path, family: str):
    """A random 3x8x8 UNet2DModel beside a FlowMatchEulerDiscreteScheduler (shift 3) or an EDMEulerScheduler."""
    from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    (FlowMatchEulerDiscreteScheduler(shift=3.0) if family == "flow" else EDMEulerScheduler()).save_pretrained(folder / "scheduler")


@pytest.mark.parametrize("family", ["flow", "edm"])
def test_flow_and_edm_teachers_distil_from_train_toy(tmp_path, family):
    _tiny_family(tmp_path / family, family)
    out = tmp_path / "run"
    train_toy.main(["--teacher", str(tmp_path / family), "--out", str(out), *PIXEL_TINY, "--steps", "2", "--batch-size",
                    "4", "--eval-samples", "16", "--reference-steps", "8", "--bootstrap-steps", "8"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["reference"] == "teacher DDIM-8 from the same noise" and set(m["teacher_ddim_rmse"]) == {"1", "2", "4"}
    assert all(np.isfinite(v) for v in [m["student_rmse"], *m["teacher_ddim_rmse"].values()])
    assert m["config"]["spacing"] == ("t" if family == "edm" else "quadratic")
    arrays = np.load(out / "samples.npz")
    teacher, schedule = pixel.load(tmp_path / family, "cpu")
    assert not schedule.variance_preserving and schedule.name == ("flow3" if family == "flow" else "edm80")
    noise = torch.from_numpy(arrays["noise"][:4])
    with torch.no_grad():
        x = boot.ddim_sample(teacher, noise, schedule=schedule, steps=8)
    assert torch.allclose(x, torch.from_numpy(arrays["teacher"][:4]), atol=1e-4), "the reference from the stored noise"


@pytest.mark.parametrize("family", ["flow", "edm"])
def test_flow_and_edm_students_from_the_teacher_start_as_the_teacher_at_lambda_zero(tmp_path, family):
    _tiny_family(tmp_path / family, family)
    args = toy.parse_args(["--teacher", str(tmp_path / family), "--out", str(tmp_path / "r")])
    teacher, schedule, student, shape, _ = toy.build(args, "cpu")
    t_a = torch.full((4,), schedule.time_of(0.0).item())
    alpha, sigma, lam = schedule.coefficients(t_a.double())
    assert lam.abs().max() < 1e-6, "anchored where alpha = sigma: x_T-scale input, no amplification"
    eps = torch.randn(4, *shape)
    with torch.no_grad():
        expected = teacher(eps, t_a, None)  # the teacher read at lambda = 0 on eps, as if it were x_t
        for t in (0.0, 0.3, 0.9):
            assert torch.allclose(student(eps, torch.full((4,), t)), expected, atol=1e-5)
    loss, _ = boot.boot_loss(student, teacher, eps, schedule=schedule, grid=boot.time_grid(schedule, 4))
    loss.backward()
    assert torch.isfinite(loss) and student.net.unet.class_embedding.linear_2.weight.grad.abs().sum() > 0


# --- evaluation of pixel teachers: judge, samples, curve, sizes, progress ------------------------------


def _judge(folder: Path, size=16):
    """A random judge, saved as teachers/train_teacher.py saves one, with the feature statistics of random images."""
    torch.manual_seed(1)
    judge = metrics.Judge(size=size, width=4, features=8).eval()
    metrics.save_judge(folder, judge, torch.rand(64, 1, size, size) * 2 - 1, torch.arange(64) % 10)


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """A 1x16x16 teacher whose folder holds a judge/, evaluated on 300 noises against its DDIM-8."""
    root = tmp_path_factory.mktemp("judged")
    _tiny_ddpm(root / "ddpm", "epsilon", flat=False, channels=1, size=16)
    _judge(root / "ddpm" / "judge")
    out, printed, progress = root / "run", io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
        train_toy.main(["--teacher", str(root / "ddpm"), "--out", str(out), *PIXEL_TINY, "--steps", "2",
                        "--batch-size", "4", "--eval-samples", "300", "--reference-steps", "8", "--bootstrap-steps", "10"])
    return root, out, printed.getvalue(), progress.getvalue()


def test_a_judge_scores_the_student_the_reference_and_each_ddim_k_on_the_same_noise(judged_run):
    root, out, printed, _ = judged_run
    m = json.loads((out / "metrics.json").read_text())
    names = {"student", "reference", "teacher_ddim_1", "teacher_ddim_2", "teacher_ddim_4"}
    assert set(m["judge"]["fd"]) == set(m["judge"]["class_share"]) == names
    assert all(len(s) == 10 and abs(sum(s) - 1) < 1e-9 for s in m["judge"]["class_share"].values())
    judge, mean, cov = metrics.load_judge(root / "ddpm" / "judge")
    arrays = np.load(out / "samples.npz")
    for name, key in (("student", "student"), ("reference", "teacher"), ("teacher_ddim_2", "ddim_2")):
        x = torch.from_numpy(arrays[key])
        assert m["judge"]["fd"][name] == pytest.approx(metrics.judge_fd(judge, x, mean, cov), rel=1e-6)
    assert "FD to held-out digits" in printed and "teacher DDIM-8 (the reference)" in printed
    assert "student's class shares" in printed


def test_pixel_runs_write_samples_npz_of_every_sampler_from_the_stored_noise(judged_run):
    root, out, _, _ = judged_run
    arrays = np.load(out / "samples.npz")
    assert {k: arrays[k].shape for k in arrays} == {k: (300, 1, 16, 16) for k in
                                                    ("noise", "student", "teacher", "ddim_1", "ddim_2", "ddim_4")}
    teacher, schedule = pixel.load(root / "ddpm", "cpu")
    noise = torch.from_numpy(arrays["noise"][-4:])  # rows of the last evaluation batch
    for k, key in ((8, "teacher"), (4, "ddim_4")):
        with torch.no_grad():
            x = boot.ddim_sample(teacher, noise, schedule=schedule, steps=k)
        assert torch.allclose(x, torch.from_numpy(arrays[key][-4:]), atol=1e-4)


def test_eval_samples_are_honoured_for_pixel_teachers_and_the_curve_stops_below_the_reference(judged_run):
    _, out, printed, _ = judged_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_samples"] == 300 and m["reference"] == "teacher DDIM-8 from the same noise"
    assert set(m["teacher_ddim_rmse"]) == {"1", "2", "4"}
    assert {k for k in m["samples_per_s"] if k.startswith("teacher")} == {"teacher_ddim_1", "teacher_ddim_2", "teacher_ddim_4"}
    assert "evaluation on cpu: 300 noises, reference DDIM-8, DDIM-k curve k = 1 ... 4" in printed


def test_the_evaluation_shows_its_progress_in_teacher_calls(judged_run):
    _, _, _, progress = judged_run
    five_batches = 5  # 300 noises in batches of 64
    assert "reference DDIM-8: 100%" in progress and f"{five_batches * 8}/{five_batches * 8}" in progress
    assert "DDIM-k curve: 100%" in progress and f"{five_batches * 7}/{five_batches * 7}" in progress
    four_batches = 4  # the error map's first 256 of the 300 noises; fixed_point's 10 Heun steps, then one from each t_k
    assert "error map (256 noises): 100%" in progress and f"{four_batches * 38}/{four_batches * 38}" in progress


def test_a_pixel_teachers_error_map_is_on_its_first_256_noises_per_pixel_with_a_picture(judged_run):
    _, out, printed, _ = judged_run
    e = json.loads((out / "metrics.json").read_text())["error_map"]
    assert e["noises"] == 256 and e["rmse"] == "per-pixel" and len(e["t"]) == len(e["to_fixed_point"]) == 11
    assert e["one_hop"][0] is None and e["to_fixed_point"][10] == 0 and all(v > 0 for v in e["one_hop"][1:])
    assert "error map (256 noises, N = 10, RMSE per-pixel)" in printed and "one-hop training residual" in printed
    assert (out / "error_map.png").stat().st_size > 10_000 and "error_map.png" in printed


def test_default_evaluation_is_sized_to_the_device():
    from types import SimpleNamespace
    unset, cpu, cuda = SimpleNamespace(eval_samples=None, reference_steps=None), torch.device("cpu"), torch.device("cuda")
    thousand = boot.Schedule.discrete(torch.linspace(0.999, 0.01, 1000))
    assert evaluation.eval_sizes(unset, cpu, thousand) == (256, 64, 64)
    assert evaluation.eval_sizes(unset, cuda, thousand) == (1000, 1000, 250), "CUDA: the teacher's own steps"
    asked = SimpleNamespace(eval_samples=512, reference_steps=2000)
    assert evaluation.eval_sizes(asked, cpu, thousand) == (512, 1000, 64)
    exact_defaults = toy.parse_args(["--data", "digits", "--out", "unused"])
    assert (exact_defaults.eval_samples, exact_defaults.reference_steps) == (4096, 4096), "formulas: any device"


def test_a_judge_is_found_in_the_teacher_folder_or_named_and_checked_before_anything_is_written(tmp_path):
    _tiny_ddpm(tmp_path / "rgb8", "epsilon", flat=False)
    _judge(tmp_path / "judge16")
    args = toy.parse_args(["--teacher", str(tmp_path / "rgb8")])
    assert evaluation.find_judge(args, (3, 8, 8), "cpu") is None, "no judge/ in the teacher folder, no --judge"
    args = toy.parse_args(["--teacher", str(tmp_path / "rgb8"), "--judge", str(tmp_path / "judge16")])
    assert evaluation.find_judge(args, (1, 16, 16), "cpu")[0].config["size"] == 16
    for judge, message in ((tmp_path / "judge16", "reads 1x16x16 images; the teacher makes 3x8x8"),
                           (tmp_path, "is not a judge folder that teachers/train_teacher.py wrote")):
        code, _, err = run_cli("--teacher", tmp_path / "rgb8", "--judge", judge, "--out", tmp_path / "run",
                              "--bootstrap-steps", "8", *PIXEL_TINY)  # 16 quadratic steps collide on 100 timesteps
        assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err
        assert not (tmp_path / "run").exists()


# --- the distribution corrector ---------------------------------------------------------------------------


def _corrector_flags(tmp_path):
    _tiny_ddpm(tmp_path / "ddpm", "epsilon", flat=False, channels=1, size=8)
    return ["--teacher", str(tmp_path / "ddpm"), *PIXEL_TINY, "--steps", "4", "--batch-size", "4", "--eval-samples", "16",
            "--reference-steps", "8", "--bootstrap-steps", "8", "--corrector-weight", "1", "--corrector-batch", "4",
            "--ckpt-every", "2"]


def test_the_corrector_is_on_by_default_for_pixel_teachers_alone():
    """Weight 1 beat BOOT alone at every budget raced on both learned MNIST teachers; exact teachers have no network
    to copy for the fake."""
    mnist = ["--teacher", str(ROOT / "teachers" / "mnist16")]
    assert toy.parse_args(mnist).corrector_weight == 1.0
    assert toy.parse_args(mnist + ["--corrector-weight", "0"]).corrector_weight == 0.0
    assert toy.parse_args([]).corrector_weight == toy.parse_args(["--data", "digits"]).corrector_weight == 0.0


def test_the_corrector_trains_a_fake_copy_logs_both_terms_shows_it_and_resumes_bit_exact(tmp_path):
    flags = _corrector_flags(tmp_path)
    out, again = tmp_path / "run", tmp_path / "again"
    train_toy.main(flags + ["--out", str(out)])
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    for key in ("loss", "corrector", "corrector_grad", "fake_loss", "grad_norm_boot", "grad_norm_corrector"):
        assert np.isfinite(last[key]) and last[key] > 0, key
    final = out / "checkpoints" / "step-00000004"
    fake = load_file(final / "fake.safetensors")
    teacher = load_file(tmp_path / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors")
    assert fake.keys() == {f"unet.{k}" for k in teacher} and any(not torch.equal(fake[f"unet.{k}"], v) for k, v in teacher.items())
    from PIL import Image
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    size, _ = pictures.layout(8, 8, 5, 8, title=True, col_labels=True)  # student, DDIM-1, 4, reference, the fake's DDIM-16
    assert grid.shape[1::-1] == size
    # Resumed from step 2 in another folder: the student and the fake network end bit-identical.
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step-00000002", again / "checkpoints" / "step-00000002")
    train_toy.main(flags + ["--out", str(again), "--resume"])
    for name in ("student.safetensors", "checkpoints/step-00000004/fake.safetensors"):
        a, b = load_file(out / name), load_file(again / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_non_finite_corrector_stops_the_run_in_one_line_with_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    flags = _corrector_flags(tmp_path)
    real = boot.corrector_loss
    calls = []

    def failing(*args, **kwargs):  # finite for the first two steps, then NaN
        loss, logs = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 2 else loss), logs
    monkeypatch.setattr(boot, "corrector_loss", failing)
    with pytest.raises(SystemExit) as stop:
        train_toy.main(flags + ["--out", str(tmp_path / "run"), "--steps", "20"])
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert stop.value.code == 1 and line.startswith("error: 5 non-finite losses or gradients in a row (steps 3 to 7")
    assert line.endswith("last good checkpoint: " + str(tmp_path / "run" / "checkpoints" / "step-00000002"))
    assert [p.name for p in runtime.checkpoints(tmp_path / "run")] == ["step-00000002"]


def test_the_corrector_runs_under_torchrun_with_both_networks_identical_on_every_rank(tmp_path):
    flags = _corrector_flags(tmp_path)
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "train_toy.py"), *flags, "--out", str(out), "--steps", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": 3, "ranks_identical": True}  # the student's and the fake network's weights
    assert np.isfinite(records[-2]["grad_norm_corrector"]) and (out / "checkpoints" / "step-00000003" / "fake.safetensors").exists()
