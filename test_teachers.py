"""Tests of teachers.py: a seconds-long run of the whole script in a tmp folder, and the committed teacher."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from safetensors.torch import load_file

import metrics
import teachers

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
COMMITTED = HERE / "teachers" / "mnist16"
TINY = ["--steps", "4", "--judge-steps", "3", "--figure-samples", "8", "--ckpt-every", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers") / "mnist16"
    teachers.main(["--out", str(out), *TINY])
    return out


def _loads_as_a_ddpm_pipeline(folder: Path):
    from diffusers import DDPMPipeline, UNet2DModel
    pipe = DDPMPipeline.from_pretrained(folder, use_safetensors=True)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
    assert unet.config.sample_size == 16 and unet.config.in_channels == unet.config.out_channels == 1
    assert list(unet.config.block_out_channels) == [32, 64, 64]
    assert unet.config.down_block_types[1] == "AttnDownBlock2D"  # the second level: 8x8
    s = pipe.scheduler.config
    assert (s.num_train_timesteps, s.beta_schedule, s.prediction_type) == (1000, "linear", "epsilon")
    return pipe


def test_the_teacher_is_a_ddpm_pipeline_that_diffusers_loads(tiny):
    pipe = _loads_as_a_ddpm_pipeline(tiny)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 1)


def test_the_held_out_digits_are_never_trained_on_and_the_split_is_reproducible(tiny):
    train, held_out = teachers.split(0)
    recorded = json.loads((tiny / "split.json").read_text())
    assert recorded["held_out"] == held_out.tolist() and recorded["seed"] == 0
    assert len(held_out) == 1000 and len(train) == 4000
    assert not set(train.tolist()) & set(held_out.tolist()) and len(set(train.tolist()) | set(held_out.tolist())) == 5000
    assert torch.equal(teachers.split(0)[1], held_out) and not torch.equal(teachers.split(1)[1], held_out)


def test_the_judge_loads_classifies_a_batch_and_carries_its_reference_statistics(tiny):
    judge, mean, cov = metrics.load_judge(tiny / "judge")
    images, _ = teachers.load_digits()
    assert images.shape == (5000, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    classes = metrics.judge_classes(judge, images[:32])
    assert classes.shape == (32,) and 0 <= classes.min() and classes.max() <= 9
    assert metrics.judge_features(judge, images[:32]).shape == (32, 128)
    assert mean.shape == (128,) and cov.shape == (128, 128) and mean.dtype == cov.dtype == torch.float64
    assert torch.allclose(cov, cov.T)
    held_out = images[teachers.split(0)[1]]  # the statistics are the held-out digits' own
    assert torch.allclose(metrics.feature_stats(metrics.judge_features(judge, held_out))[0], mean)


def test_figures_are_written_for_each_ddim_k(tiny):
    f = json.loads((tiny / "figures.json").read_text())
    assert set(f["fd_ddim"]) == {str(k) for k in teachers.FIGURE_KS} and f["samples"] == 8
    assert len(f["class_shares_ddim_50"]) == 10 and sum(f["class_shares_ddim_50"]) == pytest.approx(1)
    assert (tiny / "ddim50.png").exists()


def test_a_stopped_teacher_resumes_to_the_same_weights(tiny, tmp_path):
    teachers.main(["--out", str(tmp_path), *TINY, "--only", "teacher", "--steps", "2"])
    teachers.main(["--out", str(tmp_path), *TINY, "--only", "teacher", "--resume"])
    weights = "unet/diffusion_pytorch_model.safetensors"
    resumed, straight = load_file(tmp_path / weights), load_file(tiny / weights)
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.parametrize("args, message", [
    (["--ema", "1.5"], "--ema: must be in [0, 1)"),
    (["--steps", "0"], "--steps: must be positive"),
    (["--only", "student"], "invalid choice: 'student'"),
    (["--only", "figures"], "holds no judge/ and unet/ yet"),
])
def test_bad_flags_get_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(HERE / "teachers.py"), "--out", str(tmp_path / "t"), *args],
                          capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 2 and message in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "t").exists()


def test_a_finished_teacher_folder_is_not_overwritten_by_accident(tiny):
    before = (tiny / "split.json").read_bytes()
    done = subprocess.run([sys.executable, str(HERE / "teachers.py"), "--out", str(tiny), *TINY],
                          capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 2 and "--resume" in done.stderr and (tiny / "split.json").read_bytes() == before


def test_the_committed_teacher_loads_and_its_judge_passes_on_the_held_out_digits():
    _loads_as_a_ddpm_pipeline(COMMITTED)
    judge, mean, _ = metrics.load_judge(COMMITTED / "judge")
    images, labels = teachers.load_digits()
    held_out = json.loads((COMMITTED / "split.json").read_text())["held_out"]
    accuracy = metrics.judge_classes(judge, images[held_out]).eq(labels[held_out]).double().mean().item()
    assert accuracy >= 0.97 and accuracy == pytest.approx(json.loads((COMMITTED / "judge" / "config.json").read_text())["held_out_accuracy"])
    assert torch.allclose(metrics.feature_stats(metrics.judge_features(judge, images[held_out]))[0], mean)
