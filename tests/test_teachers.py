"""Tests of teachers/train_teacher.py: a seconds-long run of the whole script in a tmp folder (each kind of teacher), and the
committed teacher."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

import boot
from bootkit import digits, judging, metrics, pixel, sd
import train_teacher

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the repository: its scripts, prompts.txt, teachers/
COMMITTED = ROOT / "teachers" / "mnist16"
TINY = ["--steps", "4", "--judge-steps", "3", "--figure-samples", "8", "--ckpt-every", "2", "--device", "cpu"]
TINY_TEXT = ["--kind", "text", "--vae-steps", "3", "--steps", "3", "--judge-steps", "2", "--figure-samples", "6",
             "--ckpt-every", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers") / "mnist16"
    train_teacher.main(["--out", str(out), *TINY])
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
    train, held_out = digits.split(0)
    recorded = json.loads((tiny / "split.json").read_text())
    assert recorded["held_out"] == held_out.tolist() and recorded["seed"] == 0
    assert len(held_out) == 1000 and len(train) == 4000
    assert not set(train.tolist()) & set(held_out.tolist()) and len(set(train.tolist()) | set(held_out.tolist())) == 5000
    assert torch.equal(digits.split(0)[1], held_out) and not torch.equal(digits.split(1)[1], held_out)


def test_the_judge_loads_classifies_a_batch_and_carries_its_reference_statistics(tiny):
    judge, mean, cov = metrics.load_judge(tiny / "judge")
    images, _ = digits.load_digits()
    assert images.shape == (5000, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    classes = metrics.judge_classes(judge, images[:32])
    assert classes.shape == (32,) and 0 <= classes.min() and classes.max() <= 9
    assert metrics.judge_features(judge, images[:32]).shape == (32, 128)
    assert mean.shape == (128,) and cov.shape == (128, 128) and mean.dtype == cov.dtype == torch.float64
    assert torch.allclose(cov, cov.T)
    held_out = images[digits.split(0)[1]]  # the statistics are the held-out digits' own
    assert torch.allclose(metrics.feature_stats(metrics.judge_features(judge, held_out))[0], mean)


def test_figures_are_written_for_each_ddim_k(tiny):
    f = json.loads((tiny / "figures.json").read_text())
    assert set(f["fd_ddim"]) == {str(k) for k in digits.FIGURE_KS} and f["samples"] == 8
    assert len(f["class_shares_ddim_50"]) == 10 and sum(f["class_shares_ddim_50"]) == pytest.approx(1)
    assert (tiny / "ddim50.png").exists()


def test_a_stopped_teacher_resumes_to_the_same_weights(tiny, tmp_path):
    train_teacher.main(["--out", str(tmp_path), *TINY, "--only", "teacher", "--steps", "2"])
    train_teacher.main(["--out", str(tmp_path), *TINY, "--only", "teacher", "--resume"])
    weights = "unet/diffusion_pytorch_model.safetensors"
    resumed, straight = load_file(tmp_path / weights), load_file(tiny / weights)
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.parametrize("args, message", [
    (["--ema", "1.5"], "--ema: must be in [0, 1)"),
    (["--steps", "0"], "--steps: must be positive"),
    (["--only", "student"], "invalid choice: 'student'"),
    (["--only", "figures"], "holds no judge/ and unet/ yet"),
    (["--only", "vae"], "vae is a stage of the text kinds only"),
    (["--kind", "text", "--only", "teacher"], "holds no vae/ yet"),
    (["--kind", "text-flow", "--only", "figures"], "holds no judge/ and transformer/ and vae/ yet"),
    (["--kind", "image"], "invalid choice: 'image'"),
])
def test_bad_flags_get_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(ROOT / "teachers" / "train_teacher.py"), "--out", str(tmp_path / "t"), *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and message in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "t").exists()


def test_a_finished_teacher_folder_is_not_overwritten_by_accident(tiny):
    before = (tiny / "split.json").read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "teachers" / "train_teacher.py"), "--out", str(tiny), *TINY],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "--resume" in done.stderr and (tiny / "split.json").read_bytes() == before


def test_the_committed_teacher_loads_and_its_judge_passes_on_the_held_out_digits():
    _loads_as_a_ddpm_pipeline(COMMITTED)
    judge, mean, _ = metrics.load_judge(COMMITTED / "judge")
    images, labels = digits.load_digits()
    held_out = json.loads((COMMITTED / "split.json").read_text())["held_out"]
    accuracy = metrics.judge_classes(judge, images[held_out]).eq(labels[held_out]).double().mean().item()
    assert accuracy >= 0.97 and accuracy == pytest.approx(json.loads((COMMITTED / "judge" / "config.json").read_text())["held_out_accuracy"])
    assert torch.allclose(metrics.feature_stats(metrics.judge_features(judge, images[held_out]))[0], mean)


# ----------------------------------------------------------------------------------------------------
# The text-to-image teacher.


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers") / "mnist-t2i"
    train_teacher.main(["--out", str(out), *TINY_TEXT])
    return out


def test_the_text_teacher_is_a_stable_diffusion_pipeline_that_diffusers_loads(tiny_text):
    from diffusers import StableDiffusionPipeline
    index = json.loads((tiny_text / "model_index.json").read_text())
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert not list(tiny_text.rglob("*.bin")) and all(list((tiny_text / part).glob("*.safetensors"))
                                                      for part in ("vae", "text_encoder", "unet"))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_text, use_safetensors=True)
    s = pipe.scheduler.config
    assert (s.num_train_timesteps, s.beta_schedule, s.beta_start, s.beta_end, s.prediction_type) == \
        (1000, "scaled_linear", 0.00085, 0.012, "epsilon")
    assert pipe.vae.config.latent_channels == 4 and pipe.vae_scale_factor == 2
    assert pipe.vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape == (1, 4, 8, 8)
    unet = pipe.unet.config
    assert (unet.sample_size, unet.in_channels, unet.out_channels) == (8, 4, 4)
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert 1e6 < sum(p.numel() for p in pipe.unet.parameters()) < 2e6
    images = pipe(["a handwritten 7", "the digit three"], num_inference_steps=2, guidance_scale=3, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 16, 16, 3)


def test_the_vae_scaling_factor_gives_the_training_latents_unit_variance(tiny_text):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(tiny_text / "vae", use_safetensors=True)
    images, _ = digits.load_digits()
    mean, std = train_teacher.posterior(vae, images[digits.split(0)[0]])
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))  # not the script's noise
    assert (z * vae.config.scaling_factor).std().item() == pytest.approx(1, abs=0.02)


def test_train_sd_reads_the_text_teacher_and_its_prompts_file(tiny_text, tmp_path):
    import train_sd
    parts = sd.load_teacher(str(tiny_text), torch.float32, torch.device("cpu"))
    assert (parts.teacher.prediction, parts.teacher.clip) == ("epsilon", None)
    assert sd.latent_shape(parts.vae, parts.unet, 16) == (4, 8, 8)
    listed = sd.read_prompts(tiny_text / "prompts.txt")
    texts = listed.read(range(len(listed)))
    assert texts == digits.prompts() and len(texts) == 60
    assert [digits.prompt_digit(p) for p in texts] == [i % 10 for i in range(60)]
    header = (tiny_text / "prompts.txt").read_text().split("\n0\n")[0]
    assert "10% of its examples, on the empty prompt" in header  # documented, and not a line: train_sd.py adds ""
    assert sd.PromptEncoder(parts, torch.device("cpu"), warn=True)(texts).shape == (60, train_teacher.TOKENS, 64)
    run = tmp_path / "run"  # two steps of BOOT with it: the folder is a teacher that train_sd.py distils
    train_sd.main(["--teacher", str(tiny_text), "--prompts", str(tiny_text / "prompts.txt"), "--out", str(run),
                   "--device", "cpu", "--dtype", "fp32", "--batch-size", "2", "--bootstrap-steps", "4", "--steps", "2",
                   "--guidance-range", "1,5", "--ema", "0.9", "--order", "2", "--spacing", "quadratic", "--eval-samples", "10"])
    assert (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    meta = json.loads((run / "boot_sd.json").read_text())
    assert (meta["guidance_range"], meta["ema"], meta["order"], meta["spacing"]) == ([1, 5], 0.9, 2, "quadratic")
    assert meta["judged"]["teacher_step"] == "DDIM" and "DDIM-50" in judging.judged_table(meta["judged"])


def test_each_word_of_the_prompts_is_one_token_of_the_written_vocabulary():
    tokenizer, text_encoder = train_teacher.make_text_encoder(0)
    for prompt in digits.prompts():
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
        assert tokens == ["<|startoftext|>", *(w + "</w>" for w in prompt.split()), "<|endoftext|>"]
    assert tokenizer("").input_ids == [0, 1]
    assert text_encoder.config.max_position_embeddings == tokenizer.model_max_length == train_teacher.TOKENS
    assert tokenizer.convert_ids_to_tokens(tokenizer("ox").input_ids)[1:-1] == ["o", "x</w>"]  # others: letters


@pytest.mark.parametrize("prompt, digit", [
    ("a handwritten 7", 7), ("the digit seven", 7), ("7", 7), ("The Number  EIGHT.", 8), ("zero", 0),
    ("a 4, a four", 4), ("", None), ("17", None), ("a 3 or a 5", None), ("someone", None), ("the digit", None),
])
def test_prompt_digit_reads_the_digit_a_prompt_names(prompt, digit):
    assert digits.prompt_digit(prompt) == digit


@settings(deadline=None, max_examples=60, derandomize=True)
@given(digit=st.integers(0, 9), phrasing=st.sampled_from(digits.PHRASINGS), upper=st.booleans(),
       space=st.sampled_from(["", " ", "  \t"]))
def test_prompt_digit_inverts_every_phrasing(digit, phrasing, upper, space):
    prompt = space + phrasing.format(d=digit, name=digits.NAMES[digit]) + space
    assert digits.prompt_digit(prompt.upper() if upper else prompt) == digit


def test_text_figures_are_written_for_each_guidance_scale_and_ddim_k_on_the_same_split(tiny_text):
    f = json.loads((tiny_text / "figures.json").read_text())
    assert f["samples"] == 6 and set(f["guidance"]) == {str(w) for w in digits.FIGURE_WS} == {"1", "2", "3", "5"}
    for row in f["guidance"].values():
        assert set(row["accuracy_ddim"]) == set(row["fd_ddim"]) == {str(k) for k in digits.FIGURE_KS}
        assert all(0 <= a <= 1 for a in row["accuracy_ddim"].values())
    assert f["vae_rmse_held_out"] > 0 and {"fd_floor_train_vs_held_out", "fd_vae_floor_train_vs_held_out"} <= set(f)
    assert (tiny_text / "ddim50-w3.png").exists() and (tiny_text / "judge" / "config.json").exists()
    assert json.loads((tiny_text / "split.json").read_text())["held_out"] == digits.split(0)[1].tolist()  # the same


def test_a_stopped_text_teacher_resumes_to_the_same_weights(tiny_text, tmp_path):
    shutil.copytree(tiny_text / "vae", tmp_path / "vae")  # the VAE stage done
    train_teacher.main(["--out", str(tmp_path), *TINY_TEXT, "--only", "teacher", "--steps", "2"])
    train_teacher.main(["--out", str(tmp_path), *TINY_TEXT, "--only", "teacher", "--resume"])
    for weights in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        resumed, straight = load_file(tmp_path / weights), load_file(tiny_text / weights)
        assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_the_committed_text_teacher_draws_the_prompted_digit_at_w_3():
    """teachers/mnist-t2i: StableDiffusionPipeline's layout, the pixel teacher's split, and its DDIM-50 at w = 3
    draws the digit its prompt names (figures.json: 99.2% of 500; here 40 samples, prompts in turn)."""
    from diffusers import StableDiffusionPipeline
    folder = ROOT / "teachers" / "mnist-t2i"
    StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert json.loads((folder / "split.json").read_text()) == json.loads((COMMITTED / "split.json").read_text())
    figures = json.loads((folder / "figures.json").read_text())
    assert figures["guidance"]["3"]["accuracy_ddim"]["50"] >= 0.9
    parts = sd.load_teacher(str(folder), torch.float32, torch.device("cpu"))
    listed = sd.read_prompts(folder / "prompts.txt")
    texts = listed.read([i % len(listed) for i in range(40)])
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=False)
    guided = parts.teacher.finish(boot.guided(sd.teacher_fn(parts.unet, parts.teacher.schedule, parts.teacher.prediction),
                                           scale=3.0, null_cond=encode([""])))
    eps = torch.randn(40, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z = boot.ddim_sample(guided, eps, schedule=parts.teacher.schedule, steps=50, cond=encode(texts))
    judge, _, _ = metrics.load_judge(folder / "judge")
    drawn = metrics.judge_classes(judge, digits.decode(parts.vae, z))
    assert drawn.eq(torch.tensor([digits.prompt_digit(t) for t in texts])).double().mean() >= 0.9


# --- the rectified-flow teacher (--kind flow) -----------------------------------------------------------------


@settings(deadline=None, max_examples=20, derandomize=True)
@given(seed=st.integers(0, 2 ** 16))
def test_flow_noising_targets_the_velocity_that_carries_x0_to_eps(seed):
    """x_t = (1 - t) x0 + t eps and v = eps - x0: x0 = x_t - t v and eps = x_t + (1 - t) v, with t the UNet's
    timestep over 1000 (FlowMatchEulerDiscreteScheduler's sigma)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(5, 1, 4, 4, generator=gen) * 2 - 1
    x_t, timesteps, v = train_teacher.flow_noising(1000, "cpu")(x0, gen)
    t = (timesteps / 1000).view(-1, 1, 1, 1)
    assert ((timesteps >= 0) & (timesteps <= 1000)).all()
    torch.testing.assert_close(x_t - t * v, x0, atol=1e-6, rtol=0)
    eps = x_t + (1 - t) * v
    torch.testing.assert_close((1 - t) * x0 + t * eps, x_t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_noising_draws_sigma_as_boots_uniform_time_through_the_shift(shift):
    """The teacher trains at sigma = shift u / (1 + (shift - 1) u), u ~ U(0, 1): boot.Schedule.flow(shift)'s sigma
    at a uniform time, the density its samplers' grids query it at; shift 1 is sigma = u itself."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 1, 1, 1)
    _, timesteps, _ = train_teacher.flow_noising(1000, "cpu", shift=shift)(x0, gen)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))  # the generator's first draw is u
    sigma = boot.Schedule.flow(shift).coefficients(u.double())[1].float()
    torch.testing.assert_close(timesteps / 1000, sigma, atol=1e-6, rtol=0)
    if shift == 1.0:
        assert torch.equal(timesteps, u * 1000)  # bit for bit: the committed flow teacher trained so


def test_a_flow_teacher_is_a_flow_match_pipeline_with_euler_figures(tmp_path):
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler
    out = tmp_path / "flow"
    train_teacher.main(["--kind", "flow", "--out", str(out), *TINY])
    pipe = DDPMPipeline.from_pretrained(out, use_safetensors=True)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 1.0
    f = json.loads((out / "figures.json").read_text())
    assert list(f["fd_euler"]) == [str(k) for k in digits.FIGURE_KS] and len(f["class_shares_euler_50"]) == 10
    assert all(math.isfinite(v) for v in f["fd_euler"].values())
    assert (out / "euler50.png").is_file() and not (out / "ddim50.png").exists()


def test_the_committed_flow_teacher_shares_the_judge_and_boot_samples_it_as_diffusers_does():
    """teachers/mnist16-flow: the same split and judge as teachers/mnist16 (so their FDs compare), read by boot as a
    flow teacher, whose sampler on the scheduler's own Euler-8 steps is diffusers' loop from the same noise."""
    from diffusers import DDPMPipeline
    import boot_diffusers
    folder = ROOT / "teachers" / "mnist16-flow"
    for name in ("split.json", "judge/model.safetensors", "judge/reference.safetensors"):
        assert (folder / name).read_bytes() == (COMMITTED / name).read_bytes(), name
    pipe = DDPMPipeline.from_pretrained(folder, use_safetensors=True)
    teacher, schedule = pixel.load(folder, "cpu")
    unet, read = pixel.load_pixel_teacher(str(folder), "cpu")
    assert read.family == "flow" and read.prediction == "flow_prediction"
    eps = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(8)
    x = eps
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(pipe.unet(x, t.expand(len(x))).sample, t, x).prev_sample
    mine = boot.ddim_sample(teacher, eps, schedule=schedule, grid=boot_diffusers.sampler_grid(read, scheduler))
    torch.testing.assert_close(mine, x, atol=1e-4, rtol=0)


# --- the text-to-image flow teacher in SD3's layout (--kind text-flow) ------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_flow(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers") / "mnist-t2i-flow"
    train_teacher.main(["--out", str(out), *TINY_TEXT, "--kind", "text-flow"])
    return out


def test_the_text_flow_teacher_is_an_sd3_pipeline_that_diffusers_loads_and_train_sd_distils(tiny_text_flow, tmp_path):
    """SD3's layout without T5 (loaded as diffusers loads such folders), SD3's shifted flow scheduler, a VAE whose
    shift and scale give the training latents mean 0 and variance 1, the same prompts and split as teachers/mnist-t2i;
    train_sd.py reads it as a flow teacher and two steps of BOOT write a StableDiffusion3Pipeline folder."""
    import train_sd
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    folder = tiny_text_flow
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, use_safetensors=True)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.shift == train_teacher.SD3_SHIFT == 3.0
    assert (pipe.transformer.config.sample_size, pipe.transformer.config.in_channels) == (8, 4)
    images = pipe(["a handwritten 7", "the digit three"], num_inference_steps=2, guidance_scale=3, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 16, 16, 3)
    images, _ = digits.load_digits()
    mean, std = train_teacher.posterior(pipe.vae, images[digits.split(0)[0]])
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))  # not the script's noise
    scaled = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    assert pipe.vae.config.shift_factor != 0 and scaled.mean().item() == pytest.approx(0, abs=0.02)
    assert scaled.std().item() == pytest.approx(1, abs=0.02)
    assert (folder / "prompts.txt").read_text() == (ROOT / "teachers" / "mnist-t2i" / "prompts.txt").read_text()
    parts = sd.load_teacher(str(folder), torch.float32, torch.device("cpu"))
    assert parts.sd3 and parts.text_encoder_3 is None and parts.teacher.prediction == "flow_prediction"
    f = json.loads((folder / "figures.json").read_text())
    for row in f["guidance"].values():
        assert set(row["accuracy_euler"]) == set(row["fd_euler"]) == {str(k) for k in digits.FIGURE_KS}
    assert (folder / "euler50-w3.png").is_file() and not (folder / "ddim50-w3.png").exists()
    run = tmp_path / "run"
    train_sd.main(["--teacher", str(folder), "--prompts", str(folder / "prompts.txt"), "--out", str(run),
                   "--device", "cpu", "--dtype", "fp32", "--batch-size", "2", "--bootstrap-steps", "4", "--steps", "2",
                   "--guidance-scale", "3", "--eval-samples", "10"])
    assert (run / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    judged = json.loads((run / "boot_sd.json").read_text())["judged"]  # its judge/ and prompts: judged at the end
    assert list(judged["guidance"]) == ["3"] and 0 <= judged["guidance"]["3"]["student"]["accuracy"] <= 1
    assert judged["teacher_step"] == "Euler" and "Euler-50" in judging.judged_table(judged)  # boot's step on a flow


def test_a_stopped_text_flow_teacher_resumes_to_the_same_weights(tiny_text_flow, tmp_path):
    shutil.copytree(tiny_text_flow / "vae", tmp_path / "vae")  # the VAE stage done
    args = ["--out", str(tmp_path), *TINY_TEXT, "--kind", "text-flow", "--only", "teacher"]
    train_teacher.main([*args, "--steps", "2"])
    train_teacher.main([*args, "--resume"])
    for weights in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        resumed, straight = load_file(tmp_path / weights), load_file(tiny_text_flow / weights)
        assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_the_committed_text_flow_teacher_shares_the_judge_and_draws_the_prompted_digit_at_w_3():
    """teachers/mnist-t2i-flow: SD3's layout, the UNet teacher's split, prompts and judge byte for byte, and its
    Euler-50 at w = 3 draws the digit its prompt names (figures.json: 99.2% of 500; here 40 samples, prompts in turn)."""
    from diffusers import StableDiffusion3Pipeline
    folder, unet_teacher = ROOT / "teachers" / "mnist-t2i-flow", ROOT / "teachers" / "mnist-t2i"
    for name in ("split.json", "prompts.txt", "judge/model.safetensors", "judge/reference.safetensors"):
        assert (folder / name).read_bytes() == (unet_teacher / name).read_bytes(), name
    StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, use_safetensors=True)
    assert json.loads((folder / "figures.json").read_text())["guidance"]["3"]["accuracy_euler"]["50"] >= 0.9
    parts = sd.load_teacher(str(folder), torch.float32, torch.device("cpu"))
    assert parts.sd3 and parts.teacher.family == "flow"
    listed = sd.read_prompts(folder / "prompts.txt")
    texts = listed.read([i % len(listed) for i in range(40)])
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=False)
    guided = parts.teacher.finish(boot.guided(sd.teacher_fn(parts.unet, parts.teacher.schedule, parts.teacher.prediction),
                                              scale=3.0, null_cond=encode.null()))
    eps = torch.randn(40, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z = boot.ddim_sample(guided, eps, schedule=parts.teacher.schedule, steps=50, cond=encode(texts))
    judge, _, _ = metrics.load_judge(folder / "judge")
    drawn = metrics.judge_classes(judge, digits.decode(parts.vae, z))
    assert drawn.eq(torch.tensor([digits.prompt_digit(t) for t in texts])).double().mean() >= 0.9
