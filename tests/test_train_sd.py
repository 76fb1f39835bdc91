"""Tests of train_sd.py, offline on the CPU: a tiny random Stable Diffusion, saved to a temp folder, is the teacher."""
import json
import math
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub
os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend with each other on a shared machine

import numpy as np
import pytest
import torch
from PIL import Image

import boot
from bootkit import card, digits, judging, pictures, sd
import train_sd

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the repository: its scripts, prompts.txt, teachers/
RES = 16  # pixels; the tiny VAE halves it, so the latents are 8 x 8


def make_tiny_sd(root: Path) -> str:
    """A random SD-shaped pipeline saved in diffusers format (StableDiffusionPipeline.from_pretrained loads it),
    with a tokenizer from a hand-written vocabulary, and an AutoencoderTiny in root/taesd."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    letters = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters])}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    tokenizer = CLIPTokenizer(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=RES)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # SD 1.x's schedule
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root)
    AutoencoderTiny(encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1)).save_pretrained(root / "taesd")
    return str(root)


def tiny_clip(root: Path):
    """(a CLIP tokenizer of make_tiny_sd's vocabulary, written under root/sd; a tiny CLIP text config with a
    projection), seeded: the text side of the SDXL and SD3 test teachers."""
    from transformers import CLIPTextConfig, CLIPTokenizer
    make_tiny_sd(root / "sd")  # its vocabulary files
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer(vocab=str(root / "sd" / "vocab.json"), merges=str(root / "sd" / "merges.txt"),
                              model_max_length=16)
    return tokenizer, CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32)


def make_tiny_sdxl(root: Path, force_zeros: bool = True) -> str:
    """A random SDXL-shaped pipeline (two text encoders, the second with a projection; a UNet with text_time
    added conditions; a VAE that asks for fp32 decoding; SDXL's Euler scheduler), saved as diffusers saves one."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    tokenizer, config = tiny_clip(root)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=RES, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)  # SDXL's
    StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
                              tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                              force_zeros_for_empty_prompt=force_zeros).save_pretrained(root / "xl")
    return str(root / "xl")


def make_tiny_sd3(root: Path, t5: bool = True) -> str:
    """A random SD3-shaped pipeline (two CLIP encoders with projections, a T5 encoder with a hand-written unigram
    vocabulary, or none: text_encoder_3 None; an SD3Transformer2DModel, a VAE with a shift factor, a shifted
    flow-matching scheduler), saved as diffusers saves one."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast
    tokenizer, config = tiny_clip(root)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=RES, shift_factor=0.0609,
                        scaling_factor=1.5305)
    tokenizer_3 = text_encoder_3 = None
    if t5:
        vocab = [(t, 0.0) for t in ("<pad>", "</s>", "<unk>")] + [(c, -1.0) for c in string.ascii_lowercase + "\u2581"]
        tokenizer_3 = T5TokenizerFast(vocab=vocab, extra_ids=0)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=64, d_ff=37, d_kv=8, num_layers=1,
                                                 num_heads=4, relative_attention_num_buckets=8))
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                             text_encoder=CLIPTextModelWithProjection(config), tokenizer=tokenizer,
                             text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
                             text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3).save_pretrained(root / "sd3")
    return str(root / "sd3")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> str:
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> str:
    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def parts(tiny_sd):
    return sd.load_teacher(tiny_sd, torch.float32, torch.device("cpu"))


@pytest.fixture
def prompts(tmp_path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\n# a comment\n\n  a dog on a hill  \nblue sky\n")
    return str(path)


def train_args(teacher, prompts, out, *extra):
    args = ["--teacher", teacher, "--prompts", prompts, "--out", out, "--device", "cpu", "--resolution", RES,
            "--batch-size", "2", "--bootstrap-steps", "4", "--steps", "2", *extra]
    return [str(a) for a in args]


def run_cli(*args):
    """train_sd.py in its own process: (exit status, stderr)."""
    done = subprocess.run([sys.executable, str(ROOT / "train_sd.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stderr


# ----------------------------------------------------------------------------------------------------
# Prompts.


def test_prompts_skip_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffun chat\r\n\r\n# skipped\r\n   \r\n  deux chiens \u00e0 Paris \r\n".encode())
    prompts = sd.read_prompts(path)
    assert prompts.read(range(len(prompts))) == ["un chat", "deux chiens \u00e0 Paris"]
    assert prompts.read([1, 0, 1]) == ["deux chiens \u00e0 Paris", "un chat", "deux chiens \u00e0 Paris"]
    assert list(prompts.lines) == [1, 5]


def test_prompts_file_is_held_as_offsets_not_text(tmp_path):
    """A million prompts cost 16 bytes each (offset and line number), whatever their length."""
    path = tmp_path / "many.txt"
    path.write_text("".join(f"prompt number {i} about {'many things ' * 10}\n" for i in range(100_000)))
    prompts = sd.read_prompts(path)
    assert len(prompts) == 100_000 and prompts.read([99_999])[0].startswith("prompt number 99999 about")
    held = sum(a.buffer_info()[1] * a.itemsize for a in (prompts.offsets, prompts.lines))
    assert held == 16 * 100_000 and set(vars(prompts)) == {"path", "offsets", "lines"}


def test_long_prompts_are_truncated_with_one_warning(parts, capsys):
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=True)
    assert encode(["a cat", "a very long prompt about many things"]).shape == (2, 16, 32)
    assert encode(["another prompt far too long for it"]).shape == (1, 16, 32)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "truncated" in warnings[0] and "a very long prompt" in warnings[0]


def test_training_encodes_each_steps_own_batch_only(tiny_sd, prompts, tmp_path, monkeypatch):
    """No embedding is kept: the text encoder sees the empty prompt and the validation prompts once, then each
    step's batch, so memory does not grow with the prompts file."""
    from transformers import CLIPTextModel
    batches, forward = [], CLIPTextModel.forward
    spy = lambda self, ids, **kwargs: batches.append(len(ids)) or forward(self, ids, **kwargs)
    monkeypatch.setattr(CLIPTextModel, "forward", spy)
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--steps", "3", "--validate-every", "1000"))
    assert batches == [1, 3, 2, 2, 2]  # null, the 3 validation prompts, 3 steps of 2


def test_shipped_prompts_file():
    prompts = sd.read_prompts(ROOT / "prompts.txt")
    texts = prompts.read(range(len(prompts)))
    assert len(texts) >= 200 and len(set(texts)) == len(texts)


# ----------------------------------------------------------------------------------------------------
# The student's parameterization and the guidance convention.


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_student_starts_as_the_teacher_at_T(tiny_sd, parts, prediction):
    """The boundary: at initialisation g(eps, T, c) = f(eps, T, c), for any w fed to the student."""
    schedule = boot.Schedule.discrete(parts.scheduler.alphas_cumprod)
    student = sd.make_student(tiny_sd)
    eps, cond, T = torch.randn(3, 4, 8, 8), torch.randn(3, 16, 32), torch.ones(3)
    g = sd.student_fn(student, schedule, prediction, torch.tensor([1.0, 4.0, 9.0]))
    f = sd.teacher_fn(parts.unet, schedule, prediction)
    with torch.no_grad():
        torch.testing.assert_close(g(eps, T, cond), f(eps, T, cond))
        assert not torch.allclose(g(eps, T / 2, cond), f(eps, T, cond))  # the time input matters


def test_guidance_embedding_is_lcms_embedding_of_w_minus_1():
    """diffusers' convention: LCM's and StableDiffusionPipeline's guidance input embeds w - 1."""
    from diffusers import LatentConsistencyModelPipeline
    w = torch.tensor([1.0, 2.5, 7.5, 12.0])
    lcm = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=sd.GUIDANCE_DIM)
    torch.testing.assert_close(sd.guidance_embedding(w, sd.GUIDANCE_DIM), lcm, atol=0, rtol=0)


def test_student_reads_w(tiny_sd, parts):
    schedule = boot.Schedule.discrete(parts.scheduler.alphas_cumprod)
    student = sd.make_student(tiny_sd)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight)  # as after some training
    seen = []
    student.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["timestep_cond"]), with_kwargs=True)
    eps, cond, t = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32), torch.full((2,), 0.5)
    w1, w8 = torch.full((2,), 1.0), torch.full((2,), 8.0)
    with torch.no_grad():
        y1 = sd.student_fn(student, schedule, "epsilon", w1)(eps, t, cond)
        y8 = sd.student_fn(student, schedule, "epsilon", w8)(eps, t, cond)
    torch.testing.assert_close(seen[0], sd.guidance_embedding(w1, sd.GUIDANCE_DIM))
    assert not torch.allclose(y1, y8)


def test_each_examples_w_guides_its_target_and_enters_the_student(tiny_sd, prompts, tmp_path, monkeypatch):
    teacher_w, student_w = [], []
    guided, student_fn = boot.guided, sd.student_fn

    def spy_guided(teacher, *, scale, null_cond):
        teacher_w.append(scale)
        return guided(teacher, scale=scale, null_cond=null_cond)

    def spy_student_fn(model, schedule, prediction, w=None):
        student_w.append(w)
        return student_fn(model, schedule, prediction, w)
    monkeypatch.setattr(boot, "guided", spy_guided)
    monkeypatch.setattr(sd, "student_fn", spy_student_fn)
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--guidance-range", "1,4", "--validate-every", "1000"))
    assert (teacher_w[2] == 2.5).all()  # after one loss per step, the final picture at the validation w
    for t_w, s_w in zip(teacher_w[:2], student_w[:2]):
        assert s_w is t_w and s_w.shape == (2,) and ((1 <= s_w) & (s_w <= 4)).all() and s_w[0] != s_w[1]


# ----------------------------------------------------------------------------------------------------
# Training, resuming, sampling.


@pytest.mark.parametrize("ema", [None, "0.9"])
def test_the_ema_is_the_target_network_with_the_runs_teacher_step_and_grid(ema, tiny_sd, prompts, tmp_path, monkeypatch):
    losses, students, boot_loss, student_fn = [], [], boot.boot_loss, sd.student_fn

    def spy_loss(student, teacher, eps, **kwargs):
        losses.append(kwargs)
        return boot_loss(student, teacher, eps, **kwargs)

    def spy_student_fn(model, schedule, prediction, w=None):
        students.append(model)
        return student_fn(model, schedule, prediction, w)
    monkeypatch.setattr(boot, "boot_loss", spy_loss)
    monkeypatch.setattr(sd, "student_fn", spy_student_fn)
    flags = ["--order", "2", "--spacing", "quadratic", "--validate-every", "1000"] + (["--ema", ema] if ema else [])
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *flags))
    schedule = sd.load_teacher(tiny_sd, torch.float32, torch.device("cpu")).teacher.schedule
    assert len(losses) == 2
    for kwargs in losses:
        assert kwargs["config"].order == 2
        torch.testing.assert_close(kwargs["grid"], boot.time_grid(schedule, 4, spacing="quadratic"))
        assert (kwargs["target_student"] is None) == (ema is None)
    live = students[0]
    if ema:  # per step: the live student's loss, then the target network's, a model apart that does not train
        assert students[:4:2] == [live, live] and students[1] is students[3] is not live and not students[1].training
    else:
        assert students[:2] == [live, live]
    meta = json.loads((tmp_path / "run" / "boot_sd.json").read_text())
    assert (meta["order"], meta["spacing"], meta["ema"]) == (2, "quadratic", ema and float(ema))
    any_t, sample_any_t = [], boot.sample_any_t  # sampling with teacher steps: the run's own step and grid
    monkeypatch.setattr(boot, "sample_any_t", lambda *a, **kw: any_t.append(kw) or sample_any_t(*a, **kw))
    train_sd.main(["--sample", str(tmp_path / "run"), "--prompts", prompts, "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--teacher-steps", "2"])
    assert any_t and all(kw["order"] == 2 for kw in any_t)
    torch.testing.assert_close(any_t[0]["grid"], boot.time_grid(schedule, 4, spacing="quadratic"))


def test_train_writes_a_student_that_reloads_and_resumes_exactly(tiny_sd, prompts, tmp_path, capsys):
    from diffusers import UNet2DConditionModel
    args = ["--guidance-range", "1,4", "--validate-every", "2", "--ckpt-every", "1", "--lr-schedule", "cosine"]
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *args))
    run = tmp_path / "run"
    student = UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet")
    assert (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert student.config.time_cond_proj_dim == sd.GUIDANCE_DIM
    validation = Image.open(run / "validation" / "step-00000002.png")
    # 3 prompts; the teacher's row and the student's, labelled
    assert validation.size == pictures.layout(RES, RES, 2, 3, title=True, col_labels=True)[0]
    meta = json.loads((run / "boot_sd.json").read_text())
    assert meta["guidance_range"] == [1, 4] and meta["guidance_scale"] == 2.5 and meta["steps"] == 2
    assert meta["resolution"] == RES and meta["validation"]["step"] == 2 and meta["validation"]["prompts"] == 3
    assert meta["dtype"] == "fp32"  # --dtype auto on the CPU: bf16 is emulated there
    assert "judged" not in meta and not (run / "figures").exists()  # no judge/ in the teacher: none, and no word
    assert 0 < meta["validation"]["rmse_to_teacher"] < float("inf")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and torch.isfinite(torch.tensor(records[-1]["loss"]))

    assert records[-1]["lr"] == 0, "the cosine decay ends at 0 at --steps"

    # Stopped after step 2 of 3 (its newest checkpoint removed), then resumed: the straight run's weights, bit for bit.
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "straight", *args, "--steps", "3"))
    shutil.copytree(tmp_path / "straight", run, dirs_exist_ok=True)
    shutil.rmtree(run / "checkpoints" / "step-00000003")
    train_sd.main(train_args(tiny_sd, prompts, run, *args, "--steps", "3", "--resume"))
    assert "at step 2" in capsys.readouterr().out
    resumed = UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet").state_dict()
    straight = UNet2DConditionModel.from_pretrained(tmp_path / "straight" / "pipeline" / "unet").state_dict()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_sample_draws_each_batch_in_one_unet_call(tiny_sd, prompts, tmp_path, monkeypatch):
    """Named for the prompt's line; the student's weights stay float32, its UNet runs under --dtype's autocast."""
    from diffusers import UNet2DConditionModel
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--guidance-range", "1,4", "--validate-every", "1000"))
    calls, forward = [], UNet2DConditionModel.forward

    def spy(self, *args, **kwargs):
        calls.append((self.dtype, torch.is_autocast_enabled("cpu"), self.training))
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    train_sd.main(["--sample", str(tmp_path / "run"), "--prompts", prompts, "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "2", "--guidance-scale", "3", "--dtype", "bf16",
                   "--tiny-vae", str(Path(tiny_sd) / "taesd")])
    images = sorted((tmp_path / "images").glob("*.png"))
    assert [p.name for p in images] == ["00000-line00001.png", "00001-line00004.png", "00002-line00005.png"]
    assert calls == [(torch.float32, True, False)] * 2  # batches of 2 and 1
    assert all(Image.open(p).size == (RES, RES) for p in images)


def test_sample_with_teacher_steps_is_one_student_call_then_j_guided_teacher_steps(tiny_sd, prompts, tmp_path,
                                                                                     monkeypatch, capsys):
    from diffusers import UNet2DConditionModel
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--validate-every", "1000"))  # N = 4
    calls, forward = [], UNet2DConditionModel.forward

    def spy(self, sample, *args, **kwargs):
        calls.append(("student" if self.config.time_cond_proj_dim else "teacher", len(sample)))
        return forward(self, sample, *args, **kwargs)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    sample = ["--sample", str(tmp_path / "run"), "--prompts", prompts, "--device", "cpu", "--batch-size", "3"]
    train_sd.main(sample + ["--out", str(tmp_path / "j2"), "--teacher-steps", "2"])
    assert calls == [("student", 3)] + [("teacher", 6)] * 3, "Heun (the default): 2 guided calls, 1 on the last step"
    assert "1 student + 3 guided teacher calls each" in capsys.readouterr().out
    calls.clear()
    train_sd.main(sample + ["--out", str(tmp_path / "j0")])
    assert calls == [("student", 3)]
    differ = [Image.open(a).tobytes() != Image.open(b).tobytes() for a, b in
              zip(sorted((tmp_path / "j2").glob("*.png")), sorted((tmp_path / "j0").glob("*.png")))]
    assert len(differ) == 3 and any(differ)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_sd.main(sample + ["--out", str(tmp_path / "j4"), "--teacher-steps", "4"])
    check_failure(stop.value.code, capsys.readouterr().err, "--teacher-steps 4: must be in [0, 3]", tmp_path / "j4")


def test_student_trains_in_train_mode_and_is_drawn_in_eval_mode(tiny_sd, prompts, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    calls, forward, sample_student = [], UNet2DConditionModel.forward, boot.sample_student
    drawing = []

    def spy(self, *args, **kwargs):
        if self.config.time_cond_proj_dim:  # the student (the teacher has no guidance input)
            calls.append((bool(drawing), self.training, torch.is_grad_enabled()))
        return forward(self, *args, **kwargs)

    def spy_sample(*args, **kwargs):
        drawing.append(1)
        try:
            return sample_student(*args, **kwargs)
        finally:
            drawing.pop()
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    monkeypatch.setattr(boot, "sample_student", spy_sample)
    for run, extra in (("plain", []), ("ema", ["--ema", "0.9"])):
        calls.clear()
        train_sd.main(train_args(tiny_sd, prompts, tmp_path / run, "--validate-every", "1", *extra))
        training, validation = [c for c in calls if not c[0]], [c for c in calls if c[0]]
        assert training and all(c[1] for c in training if c[2]) and any(c[2] for c in training)
        target = [c for c in training if not c[1]]  # with --ema, the target network: in eval mode, no gradient
        assert len(target) == (2 if extra else 0) and not any(c[2] for c in target)
        assert len(validation) == 2 and not any(c[1] or c[2] for c in validation)


def test_every_run_ends_with_a_picture_of_its_final_student(tiny_sd, prompts, tmp_path):
    chosen = tmp_path / "chosen.txt"
    chosen.write_text("a green frog\nan old map\n")
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--steps", "3", "--validate-every", "2",
                             "--validation-prompts", chosen))
    written = sorted(p.name for p in (tmp_path / "run" / "validation").glob("*.png"))
    assert written == ["step-00000002.png", "step-00000003.png"]
    assert Image.open(tmp_path / "run" / "validation" / written[-1]).size == pictures.layout(
        RES, RES, 2, 2, title=True, col_labels=True)[0]  # the 2 chosen
    figures = [json.loads(line) for line in (tmp_path / "run" / "validation" / "log.jsonl").read_text().splitlines()]
    assert [f["step"] for f in figures] == [2, 3] and all(f["prompts"] == 2 for f in figures)


@pytest.mark.parametrize("order", [1, 2])
def test_boot_sd_json_counts_the_teacher_rows_of_training_alone(order, tiny_sd, prompts, tmp_path):
    """teacher_rows (bench/race.py's BOOT teacher calls), counted as made: each example's target is `order` guided
    calls of 2 rows (Heun's rows stepping to t = 0 ride along in the batched call); validation's are not counted."""
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--steps", "3", "--order", str(order)))
    meta = json.loads((tmp_path / "run" / "boot_sd.json").read_text())
    assert meta["teacher_rows"] == 3 * 2 * order * 2 and meta["validation"]["step"] == 3


@pytest.mark.parametrize("large, flags, lr", [(False, [], train_sd.LR_SMALL), (True, [], train_sd.LR_LARGE),
                                               (True, ["--lr", "2e-4"], 2e-4)])
def test_default_lr_follows_the_unets_size_is_constant_and_an_explicit_lr_wins(large, flags, lr, tiny_sd, prompts, tmp_path,
                                                                    monkeypatch):
    if large:  # the tiny UNet counted as Stable Diffusion's size
        monkeypatch.setattr(train_sd, "LARGE_UNET", 1)
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--validate-every", "1000", *flags))
    meta = json.loads((tmp_path / "run" / "boot_sd.json").read_text())
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert meta["lr"] == lr and (meta["lr_schedule"], last["lr"]) == ("constant", lr)  # the default: no decay


def test_resolution_defaults_to_the_teachers(tiny_sd, prompts, tmp_path):
    args = train_args(tiny_sd, prompts, tmp_path / "run", "--steps", "1", "--validate-every", "1000")
    i = args.index("--resolution")
    train_sd.main(args[:i] + args[i + 2:])
    assert json.loads((tmp_path / "run" / "boot_sd.json").read_text())["resolution"] == RES  # sample_size 8 x 2


# ----------------------------------------------------------------------------------------------------
# The student inside diffusers: StableDiffusionPipeline draws what --sample draws; the model card.


def student_with_trained_guidance(run: Path):
    """Give the run's student a non-zero guidance projection (as after a long run): a wrong w convention then shows."""
    from diffusers import UNet2DConditionModel
    student = UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet")
    torch.manual_seed(1)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.1)
    student.save_pretrained(run / "pipeline" / "unet")


STOCK_DRAW = """
import json, sys
import numpy as np, torch
from diffusers import AutoencoderTiny, AutoPipelineForText2Image, DiffusionPipeline
import diffusers
folder, tiny_vae, out, family, scale, scheduler = sys.argv[1:]
extra = {"vae": AutoencoderTiny.from_pretrained(tiny_vae)} if tiny_vae else {}
drawn = {}
for load in (DiffusionPipeline, getattr(diffusers, family), AutoPipelineForText2Image):
    pipe = load.from_pretrained(folder, **extra)
    assert type(pipe).__name__ == family and type(pipe.scheduler).__name__ == scheduler, load
    drawn[load.__name__] = pipe(["a red cat", "blue sky", "a dog on a hill"], num_inference_steps=1, guidance_scale=float(scale),
                                generator=torch.Generator().manual_seed(5), output_type="np").images
assert not [m for m in sys.modules if m.startswith(("boot", "bootkit"))], "nothing of boot imported"
np.savez(out, **drawn)
"""


def stock_draw(folder: Path, tiny_vae: str, family: str, scale: float = 3.0, scheduler: str = "LCMScheduler") -> dict:
    """STOCK_DRAW in a fresh process: {loader: images (3, H, W, 3) in [0, 1]}."""
    out = folder.parent / "stock.npz"
    done = subprocess.run([sys.executable, "-c", STOCK_DRAW, str(folder), tiny_vae, str(out), family, str(scale), scheduler],
                          cwd=folder.parent,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(np.load(out))


@pytest.mark.parametrize("guidance, vae", [(["--guidance-range", "1,5"], "full"), (["--guidance-scale", "3"], "tiny")])
def test_the_pipeline_folder_loads_in_one_call_and_draws_what_sample_draws(guidance, vae, tiny_sd, tmp_path,
                                                                           monkeypatch):
    """Same prompts, same seed, the run's w (3), fp32: RUN/pipeline draws --sample's images in one UNet call fed
    w - 1, loaded in one call by stock diffusers in a fresh process that imports nothing of boot (DiffusionPipeline,
    StableDiffusionPipeline, AutoPipelineForText2Image: LCMScheduler, one step), and by BootPipeline."""
    import boot_diffusers
    from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    texts = ["a red cat", "blue sky", "a dog on a hill"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    run = tmp_path / "run"
    train_sd.main(train_args(tiny_sd, tmp_path / "p.txt", run, *guidance, "--validate-every", "1000",
                             "--dtype", "fp32"))
    student_with_trained_guidance(run)
    tiny_vae = ["--tiny-vae", str(Path(tiny_sd) / "taesd")] if vae == "tiny" else []
    train_sd.main(["--sample", str(run), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "3", "--dtype", "fp32", "--seed", "5", *tiny_vae])
    sampled = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "images").glob("*.png"))])

    for load, images in stock_draw(run / "pipeline", tiny_vae[-1] if tiny_vae else "", "StableDiffusionPipeline").items():
        assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3, load  # --sample rounds to uint8

    calls, forward = [], UNet2DConditionModel.forward
    spy = lambda self, sample, timestep, *a, **k: calls.append((timestep, k["timestep_cond"])) or forward(
        self, sample, timestep, *a, **k)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    extra = {"vae": AutoencoderTiny.from_pretrained(Path(tiny_sd) / "taesd")} if vae == "tiny" else {}
    pipe = boot_diffusers.BootPipeline.from_pretrained(run / "pipeline", **extra)
    assert isinstance(pipe.scheduler, LCMScheduler)
    images = pipe(texts, generator=torch.Generator().manual_seed(5), output_type="np").images  # the run's w, one step
    assert len(calls) == 1 and int(calls[0][0]) == 999  # one UNet call, no CFG, at the stock scheduler's timestep
    torch.testing.assert_close(calls[0][1], sd.guidance_embedding(torch.full((3,), 3.0), sd.GUIDANCE_DIM),
                               rtol=0, atol=0)
    assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3

    latents = pipe(texts, guidance_scale=3.0, generator=torch.Generator().manual_seed(5), output_type="latent").images
    parts = sd.load_teacher(tiny_sd, torch.float32, torch.device("cpu"), unet=False)
    schedule = boot.Schedule.discrete(parts.scheduler.alphas_cumprod)
    eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    g = sd.student_fn(sd.load_student(run, "test", "cpu"), schedule, "epsilon", torch.full((3,), 3.0))
    cond = sd.PromptEncoder(parts, torch.device("cpu"), warn=False)(texts)
    # float32 rounding alone: the folder's UNet reads t = 0 at 999 through a moved bias, load_student's at -1 through
    # the bias moved back; eps-prediction divides the UNet's rounding by alpha_T (0.07)
    torch.testing.assert_close(latents, boot.sample_student(g, eps, cond), rtol=1e-4, atol=1e-4)


STOCK_LORA = """
import sys
import numpy as np, torch
from diffusers import DiffusionPipeline, LCMScheduler
teacher, lora, out = sys.argv[1:]
texts = ["a red cat", "blue sky", "a dog on a hill"]
pipe = DiffusionPipeline.from_pretrained(teacher)
pipe.scheduler = LCMScheduler.from_pretrained(lora, subfolder="scheduler")
draw = lambda: pipe(texts, num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(5),
                    output_type="np").images
without = draw()
pipe.load_lora_weights(lora)
assert not [m for m in sys.modules if m.startswith(("boot", "bootkit"))], "nothing of boot imported"
np.savez(out, lora=draw(), without=without)
"""


def test_a_lora_student_trains_adapters_alone_and_loads_onto_the_stock_teacher_pipeline(tiny_sd, tmp_path, monkeypatch):
    """--lora-rank: the teacher's own UNet with adapters, the base frozen (the fused student differs from the
    teacher only where adapters sit). RUN/lora loads onto the stock teacher pipeline in a fresh process (its
    one-step scheduler swapped in, load_lora_weights) and draws --sample's images in one call at guidance_scale 1;
    the teacher without the LoRA draws others."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    texts = ["a red cat", "blue sky", "a dog on a hill"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    run = tmp_path / "run"
    train_sd.main(train_args(tiny_sd, tmp_path / "p.txt", run, "--lora-rank", "4", "--guidance-scale", "3", "--lr",
                             "1e-2", "--validate-every", "1000", "--dtype", "fp32"))
    weights = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert any(".to_q.lora_A." in k for k in weights) and weights["unet.time_embedding.linear_1.lora_B.bias"].abs().max() > 0
    fused = UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet")
    teacher = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    assert fused.config.time_cond_proj_dim is None, "a LoRA student has no guidance input"
    torch.testing.assert_close(fused.conv_in.weight, teacher.conv_in.weight, rtol=0, atol=0)  # no adapter there
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(fused.get_parameter(q), teacher.get_parameter(q))
    train_sd.main(["--sample", str(run), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "3", "--dtype", "fp32", "--seed", "5"])
    sampled = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "images").glob("*.png"))])
    done = subprocess.run([sys.executable, "-c", STOCK_LORA, tiny_sd, str(run / "lora"), str(tmp_path / "lora.npz")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    drawn = np.load(tmp_path / "lora.npz")
    assert np.abs(drawn["lora"] * 255 - sampled).max() <= 0.5 + 1e-3
    assert np.abs(drawn["without"] * 255 - sampled).max() > 1
    assert "guidance_scale=1.0" in (run / "lora" / "README.md").read_text()
    # the fused student's pipeline folder: BootPipeline draws it at the run's w without guidance (one UNet call)
    assert "guidance_scale=1.0,  # w = 3.0 is baked in" in (run / "pipeline" / "README.md").read_text()
    from boot_diffusers import BootPipeline
    calls, forward = [], UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    images = BootPipeline.from_pretrained(run / "pipeline")(texts, generator=torch.Generator().manual_seed(5),
                                                               output_type="np").images
    assert len(calls) == 1 and np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3


# The distribution corrector (BOOT.md section 10) in train_sd.


def corrector_run(tiny_sd, prompts, out, *extra):
    train_sd.main(train_args(tiny_sd, prompts, out, "--corrector-weight", "1", "--corrector-batch", "2",
                             "--validate-every", "1000", "--ckpt-every", "1", *extra))
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_corrector_logs_both_terms_shows_the_fake_network_and_is_zero_where_the_fake_is_the_real(tiny_sd, prompts,
                                                                                                      tmp_path):
    """At w = 1 the fake network (the teacher plus a zero-initialised guidance input) is the real denoiser: the term
    is 0 to rounding at the first step; at w = 5 it is not. The log carries both losses and each term's gradient
    norm; the validation picture a third row, the fake network's DDIM-N; the checkpoint the fake network."""
    at_1 = corrector_run(tiny_sd, prompts, tmp_path / "w1", "--guidance-scale", "1", "--steps", "1")[-1]
    at_5 = corrector_run(tiny_sd, prompts, tmp_path / "w5", "--guidance-scale", "5", "--steps", "1")[-1]
    assert at_1["corrector"] < 1e-12 < 1e-6 < at_5["corrector"]
    for key in ("loss", "corrector", "corrector_grad", "fake_loss", "grad_norm_boot", "grad_norm_corrector"):
        assert math.isfinite(at_5[key]), key
    picture = Image.open(tmp_path / "w5" / "validation" / "step-00000001.png")
    assert picture.size == pictures.layout(RES, RES, 3, 3, title=True, col_labels=True)[0]
    meta = json.loads((tmp_path / "w5" / "boot_sd.json").read_text())
    assert meta["corrector_batch"] == 2 and meta["fake_lr"] == meta["lr"] and meta["fake_updates"] == 1
    checkpoint = next((tmp_path / "w5" / "checkpoints").iterdir())
    assert any("fake" in p.name for p in checkpoint.iterdir()), sorted(p.name for p in checkpoint.iterdir())


def test_a_run_with_the_corrector_resumes_exactly(tiny_sd, prompts, tmp_path, capsys):
    """Stopped after step 2 of 3, then resumed: the straight run's student, bit for bit (the fake network and its
    optimizer come back from the checkpoint; without them the third step's corrector would differ)."""
    from diffusers import UNet2DConditionModel
    args = ("--guidance-range", "1,5", "--steps", "3")
    corrector_run(tiny_sd, prompts, tmp_path / "straight", *args)
    shutil.copytree(tmp_path / "straight", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000003")
    corrector_run(tiny_sd, prompts, tmp_path / "run", *args, "--resume")
    assert "at step 2" in capsys.readouterr().out
    resumed, straight = (UNet2DConditionModel.from_pretrained(tmp_path / run / "pipeline" / "unet").state_dict()
                         for run in ("run", "straight"))
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("flags, message", [(["--corrector-weight", "-1"], "--corrector-weight -1.0: must be 0 or more"),
                                            (["--corrector-weight", "nan"], "--corrector-weight nan: must be 0 or more"),
                                            (["--corrector-start", "-2"], "--corrector-start -2: must be 0 or more")])
def test_bad_corrector_flags_are_one_line(flags, message, tiny_sd, prompts, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *flags))
    check_failure(stop.value.code, capsys.readouterr().err, message, tmp_path / "run")


def test_a_lora_students_teacher_is_its_base_with_the_adapters_off(parts):
    """One copy of the weights: the LoRA student's teacher is the same module with its adapters off, bit for bit
    the teacher; only the adapters train, in float32."""
    import copy
    unet = sd.add_lora(copy.deepcopy(parts.unet), 4)
    trained = [(n, p.dtype) for n, p in unet.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n and dtype == torch.float32 for n, dtype in trained)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                torch.nn.init.normal_(p, std=0.1)
    schedule = parts.teacher.schedule
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.9]), torch.randn(2, 16, 32)
    with torch.no_grad():
        want = sd.teacher_fn(parts.unet, schedule, "epsilon")(x, t, cond)
        torch.testing.assert_close(sd.teacher_fn(unet, schedule, "epsilon", lora_base=True)(x, t, cond), want, rtol=0, atol=0)
        assert not torch.allclose(sd.teacher_fn(unet, schedule, "epsilon")(x, t, cond), want), "adapters on: the student"


def test_a_lora_run_resumes_to_the_same_adapters(tiny_sd, prompts, tmp_path, capsys):
    """Stopped after step 2 of 3 (its newest checkpoint removed), then resumed: the straight run's LoRA, bit for bit."""
    from safetensors.torch import load_file
    args = ["--lora-rank", "2", "--guidance-scale", "3", "--ckpt-every", "1", "--validate-every", "1000", "--steps", "3"]
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "straight", *args))
    shutil.copytree(tmp_path / "straight", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000003")
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *args, "--resume"))
    assert "at step 2" in capsys.readouterr().out
    resumed, straight = (load_file(tmp_path / run / "lora" / "pytorch_lora_weights.safetensors") for run in ("run", "straight"))
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_a_lora_student_refuses_a_guidance_range(tiny_sd, prompts, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--lora-rank", "4", "--guidance-range", "1,5"))
    check_failure(stop.value.code, capsys.readouterr().err, "--lora-rank with --guidance-range: a LoRA cannot carry the "
                  "student's guidance input", tmp_path / "run")


def test_sample_noise_is_drawn_on_the_cpu_whatever_the_device():
    """--sample's noise is a pipeline's from a CPU generator (diffusers' randn_tensor), drawn on the CPU, then moved:
    the same on any device ("meta" stands in for an accelerator)."""
    from diffusers.utils.torch_utils import randn_tensor
    shape, cpu = (4, 8, 8), torch.device("cpu")
    theirs = randn_tensor((3, *shape), generator=torch.Generator().manual_seed(5), device=cpu, dtype=torch.float32)
    assert torch.equal(sd.noise(torch.Generator().manual_seed(5), 3, shape, cpu), theirs)
    gen, drawn = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.randn(3, *shape, generator=drawn)
    assert sd.noise(gen, 3, shape, torch.device("meta")).device.type == "meta"
    assert torch.equal(gen.get_state(), drawn.get_state())  # the CPU generator drew it


def test_the_pipeline_refuses_what_a_one_step_student_cannot_honour(tiny_sd, prompts, tmp_path):
    """BootPipeline: a ValueError for each input it cannot honour, from the facts the run wrote into its scheduler."""
    from diffusers import LCMScheduler
    from boot_diffusers import BOOT_KEY, BootPipeline
    run = tmp_path / "run"
    train_sd.main(train_args(tiny_sd, prompts, run, "--guidance-range", "1,4", "--steps", "1", "--validate-every", "1000"))
    pipe = BootPipeline.from_pretrained(run / "pipeline")
    draw = lambda **kwargs: pipe(["a red cat"], output_type="latent", **kwargs).images
    assert draw().shape == (1, 4, 8, 8)  # the defaults draw: the run's w, 2.5
    for kwargs, message in [
            (dict(guidance_scale=7.5), r"guidance_scale=7.5 is outside the range this student was trained on, \[1.0, 4.0\]"),
            (dict(guidance_scale=0.5), r"guidance_scale=0.5 is outside the range"),
            (dict(negative_prompt="blurry"), "negative_prompt: a BOOT student has guidance built in"),
            (dict(negative_prompt_embeds=torch.zeros(1, 16, 32)), "negative_prompt_embeds: .* cannot honour one"),
            (dict(num_inference_steps=4), "num_inference_steps=4: a BOOT student draws in one step")]:
        with pytest.raises(ValueError, match=message):
            draw(**kwargs)
    config = {k: v for k, v in pipe.scheduler.config.items() if k != BOOT_KEY}
    pipe.scheduler = LCMScheduler.from_config(config)
    pipe.scheduler.register_to_config(**{BOOT_KEY: {**pipe.scheduler.config.get(BOOT_KEY, {}),
                                                    "guidance_range": [3.0, 3.0], "guidance_scale": 3.0}})
    with pytest.raises(ValueError, match=r"guidance_scale=4.0: this student was trained at w = 3.0 only"):
        draw(guidance_scale=4.0)
    pipe.scheduler = LCMScheduler.from_config(config)
    with pytest.raises(ValueError, match="records no trained guidance range"):  # a stock LCMScheduler
        draw(guidance_scale=2.0)


def test_a_folder_of_before_with_boots_own_scheduler_still_draws_and_refuses_img2img(tiny_sd, prompts, tmp_path):
    """Pipeline folders written before 2026-12-06: BootOneStepScheduler, the UNet reading t = 0 at -1. BootPipeline
    draws what the new folder draws; diffusers' own img2img and inpainting pipelines (after import boot_diffusers)
    stop with an error, not an AttributeError; another num_inference_steps gets a warning and one step."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from boot_diffusers import BootOneStepScheduler, BootPipeline
    run, old = tmp_path / "run", tmp_path / "old"
    train_sd.main(train_args(tiny_sd, prompts, run, "--guidance-range", "1,4", "--steps", "1", "--validate-every", "1000"))
    shutil.copytree(run / "pipeline", old)
    facts = json.loads((run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())["_boot"]
    schedule = boot.Schedule.discrete(sd.load_teacher(tiny_sd, torch.float32, "cpu", unet=False).scheduler.alphas_cumprod)
    g = boot.TeacherStudent(None, schedule, prediction="epsilon")
    BootOneStepScheduler(prediction_type="epsilon", alpha_T=g.alpha_a, sigma_T=g.sigma_a,
                         guidance_range=facts["guidance_range"], guidance_scale=facts["guidance_scale"]
                         ).save_pretrained(old / "scheduler")
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({**index, "scheduler": ["boot_diffusers", "BootOneStepScheduler"]}))
    sd.load_student(run, "test", "cpu").save_pretrained(old / "unet")  # the UNet as trained: t = 0 at -1
    draw = lambda folder: BootPipeline.from_pretrained(folder)(["a red cat"], output_type="latent",
                                                              generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(draw(old), draw(run / "pipeline"), rtol=1e-4, atol=1e-4)

    stock = StableDiffusionPipeline.from_pretrained(old)
    with pytest.warns(UserWarning, match="num_inference_steps=4: a BOOT student draws in one step, and takes one"):
        stock(["a red cat"], num_inference_steps=4, guidance_scale=2.0, output_type="latent")
    image = Image.new("RGB", (RES, RES))
    for cls, extra in [(StableDiffusionImg2ImgPipeline, {}), (StableDiffusionInpaintPipeline, {"mask_image": image})]:
        with pytest.raises(NotImplementedError, match="img2img and inpainting .* not supported by a one-step BOOT"):
            cls.from_pretrained(old)(["a red cat"], image=image, num_inference_steps=1, **extra)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("w", [1.0, 7.5])
def test_guided_teacher_ddim_is_stable_diffusion_pipelines(w, prediction, tiny_sd, parts):
    """The oracle: train_sd's guided teacher under boot.ddim_sample (N steps) is StableDiffusionPipeline with
    DDIMScheduler (trailing timesteps, alpha 1 at the end, eta 0), from the same latents, prompts (one truncated)
    and w, with an empty negative prompt: it pins prompt encoding, the null branch, CFG, the timestep map and the
    latent scale. N divides the 1000 timesteps: diffusers' DDIM steps from t to t - 1000 // N, the next grid time
    only then."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    texts, steps = ["a red cat", "a very long prompt about many things"], 4
    schedule = boot.Schedule.discrete(parts.scheduler.alphas_cumprod)
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=False)
    teacher = boot.guided(sd.teacher_fn(parts.unet, schedule, prediction), scale=torch.full((2,), w),
                          null_cond=encode([""]))
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = boot.ddim_sample(teacher, eps, schedule=schedule, steps=steps, cond=encode(texts))
    ddim = DDIMScheduler.from_pretrained(tiny_sd, subfolder="scheduler", timestep_spacing="trailing",
                                         set_alpha_to_one=True, clip_sample=False, prediction_type=prediction)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                                   scheduler=ddim, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    theirs = pipe(texts, guidance_scale=w, num_inference_steps=steps, latents=eps, eta=0.0, output_type="latent").images
    # fp32 rounding alone: CFG on x0 (boot.guided) rather than on the prediction; the random UNet's latents reach
    # about 50, where one ulp is 4e-6.
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


@pytest.mark.parametrize("force_zeros", [True, False])
def test_sdxl_guided_teacher_ddim_is_stable_diffusion_xl_pipelines(force_zeros, tiny_sdxl, tmp_path):
    """The SDXL oracle: train_sd's guided teacher under boot.ddim_sample is StableDiffusionXLPipeline with
    DDIMScheduler (trailing, alpha 1 at the end, eta 0) from the same latents, prompts and w: it pins both encoders'
    penultimate states, the pooled text, the time ids of the resolution and the null branch (zeros when
    force_zeros_for_empty_prompt, else the empty prompt)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    teacher = tiny_sdxl if force_zeros else make_tiny_sdxl(tmp_path, force_zeros=False)
    parts = sd.load_teacher(teacher, torch.float32, torch.device("cpu"))
    assert parts.xl and parts.force_zeros == force_zeros
    texts, steps, w = ["a red cat", "a very long prompt about many things"], 4, 5.0
    schedule = parts.teacher.schedule
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=False, resolution=RES)
    null = encode.null()
    assert (null[:, :-1].abs().sum() == 0) == force_zeros
    teacher_fn = boot.guided(sd.teacher_fn(parts.unet, schedule, "epsilon"), scale=w, null_cond=null)
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = boot.ddim_sample(teacher_fn, eps, schedule=schedule, steps=steps, cond=encode(texts))
    ddim = DDIMScheduler.from_pretrained(teacher, subfolder="scheduler", timestep_spacing="trailing",
                                         set_alpha_to_one=True, clip_sample=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher, scheduler=ddim)
    theirs = pipe(texts, guidance_scale=w, num_inference_steps=steps, latents=eps, eta=0.0, height=RES, width=RES,
                  output_type="latent").images
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    other = sd.PromptEncoder(parts, torch.device("cpu"), warn=False, resolution=2 * RES)(texts)
    assert not torch.equal(other, encode(texts)), "the time ids are the resolution's"


def test_an_sdxl_run_writes_a_stock_sdxl_folder_that_draws_what_sample_draws(tiny_sdxl, tmp_path):
    """An SDXL teacher distils from the same command: its run writes a StableDiffusionXLPipeline folder (LCMScheduler,
    the student's guidance input) that stock diffusers loads in a fresh process and draws --sample's images with in
    one call; BootXLPipeline refuses what the student cannot honour. fp16 loading keeps the VAE in fp32."""
    from boot_diffusers import BootXLPipeline
    texts = ["a red cat", "blue sky", "a dog on a hill"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    run = tmp_path / "run"
    train_sd.main(train_args(tiny_sdxl, tmp_path / "p.txt", run, "--guidance-range", "1,5", "--validate-every", "1000",
                             "--dtype", "fp32"))
    student_with_trained_guidance(run)
    train_sd.main(["--sample", str(run), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "3", "--dtype", "fp32", "--seed", "5", "--guidance-scale", "3"])
    sampled = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "images").glob("*.png"))])
    for load, images in stock_draw(run / "pipeline", "", "StableDiffusionXLPipeline").items():
        assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3, load
    pipe = BootXLPipeline.from_pretrained(run / "pipeline")
    images = pipe(texts, guidance_scale=3.0, generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3
    for kwargs, message in [(dict(guidance_scale=7.5), "guidance_scale=7.5 is outside the range"),
                            (dict(negative_prompt_2="blurry"), "negative_prompt_2: a BOOT student has guidance built in"),
                            (dict(negative_original_size=(8, 8)), "negative_original_size: .* cannot honour one")]:
        with pytest.raises(ValueError, match=message):
            pipe(["a red cat"], output_type="latent", **kwargs)
    half = sd.load_teacher(tiny_sdxl, torch.float16, torch.device("cpu"), unet=False)
    assert half.vae.dtype == torch.float32 and half.text_encoder_2.dtype == torch.float16


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_guided_teacher_euler_is_stable_diffusion_3s_pipeline(t5, tiny_sd3, tmp_path):
    """The SD3 oracle: train_sd's guided flow teacher, stepped by boot on the scheduler's own Euler grid
    (boot_diffusers.sampler_grid), is StableDiffusion3Pipeline from the same latents, prompts and w: it pins both CLIP
    encoders' penultimate states and pooled outputs, T5's zeros when it is absent, the empty prompt's null branch,
    the timestep n sigma_t and the shift."""
    import boot_diffusers
    from diffusers import StableDiffusion3Pipeline
    teacher = tiny_sd3 if t5 else make_tiny_sd3(tmp_path, t5=False)
    parts = sd.load_teacher(teacher, torch.float32, torch.device("cpu"))
    assert parts.sd3 and (parts.text_encoder_3 is not None) == t5 and parts.teacher.family == "flow"
    texts, steps, w = ["a red cat", "a very long prompt about many things"], 4, 5.0
    schedule = parts.teacher.schedule
    encode = sd.PromptEncoder(parts, torch.device("cpu"), warn=False)
    guided = boot.guided(sd.teacher_fn(parts.unet, schedule, "flow_prediction"), scale=w, null_cond=encode.null())
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    # without T5 diffusers loads the folder with both named None, as its docs drop T5
    pipe = StableDiffusion3Pipeline.from_pretrained(teacher, **({} if t5 else dict(text_encoder_3=None, tokenizer_3=None)))
    pipe.scheduler.set_timesteps(steps)
    grid = boot_diffusers.sampler_grid(parts.teacher, pipe.scheduler)
    ours = boot.ddim_sample(guided, eps, schedule=schedule, grid=grid, cond=encode(texts))
    theirs = pipe(texts, guidance_scale=w, num_inference_steps=steps, latents=eps, height=RES, width=RES,
                  output_type="latent").images
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_an_sd3_run_writes_a_stock_sd3_folder_that_draws_what_sample_draws(tiny_sd3, tmp_path):
    """An SD3 teacher distils from the same command, its w baked in (StableDiffusion3Pipeline feeds no guidance
    input): the run writes a StableDiffusion3Pipeline folder (its own flow-matching scheduler, one Euler step at
    timestep 1000, the transformer retimed there) that stock diffusers loads in a fresh process and draws --sample's
    images with at guidance_scale 1; BootSD3Pipeline draws them at the run's w; a range is refused in one line."""
    from boot_diffusers import BootSD3Pipeline
    texts = ["a red cat", "blue sky", "a dog on a hill"]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n")
    run = tmp_path / "run"
    train_sd.main(train_args(tiny_sd3, tmp_path / "p.txt", run, "--guidance-scale", "3", "--validate-every", "1000",
                             "--dtype", "fp32", "--lr", "1e-2"))
    train_sd.main(["--sample", str(run), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "3", "--dtype", "fp32", "--seed", "5"])
    sampled = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "images").glob("*.png"))])
    for load, images in stock_draw(run / "pipeline", "", "StableDiffusion3Pipeline", scale=1.0,
                                   scheduler="FlowMatchEulerDiscreteScheduler").items():
        assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3, load
    images = BootSD3Pipeline.from_pretrained(run / "pipeline")(texts, generator=torch.Generator().manual_seed(5),
                                                                  output_type="np").images
    assert np.abs(images * 255 - sampled).max() <= 0.5 + 1e-3
    assert "guidance_scale=1.0,  # w = 3.0 is baked in" in (run / "pipeline" / "README.md").read_text()
    code, err = run_cli(*train_args(tiny_sd3, tmp_path / "p.txt", tmp_path / "range", "--guidance-range", "1,5"))
    assert code == 2 and err.strip().endswith("--guidance-range with an SD3 teacher: StableDiffusion3Pipeline feeds its "
                                              "transformer no guidance input, so its student bakes one w (--guidance-scale)")


def test_sd3_refusals_and_the_corrector_on_an_sd3_teacher(tiny_sd3, prompts, tmp_path, capsys):
    """One line, nothing written: a LoRA of SD3's transformer (not written yet), FLUX's layout. The corrector runs on
    SD3 (its fake network a copy of the transformer at the baked w): both terms logged, finite."""
    teacher = tmp_path / "flux"
    shutil.copytree(tiny_sd3, teacher)
    index = json.loads((teacher / "model_index.json").read_text())
    (teacher / "model_index.json").write_text(json.dumps({**index, "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    for flags, folder, message in [(["--lora-rank", "4"], tiny_sd3, "--lora-rank with an SD3 teacher: a LoRA student of "
                                                                    "SD3's transformer is not written yet"),
                                   ([], str(teacher), "its transformer is a FluxTransformer2DModel; train_sd.py reads "
                                                      "SD3's layout")]:
        with pytest.raises(SystemExit) as stop:
            train_sd.main(train_args(folder, prompts, tmp_path / "run", "--guidance-scale", "3", *flags))
        check_failure(stop.value.code, capsys.readouterr().err, message, tmp_path / "run")
    train_sd.main(train_args(tiny_sd3, prompts, tmp_path / "corrected", "--guidance-scale", "3", "--steps", "1",
                             "--corrector-weight", "1", "--corrector-batch", "2", "--validate-every", "1000"))
    last = json.loads((tmp_path / "corrected" / "log.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(last[k]) for k in ("corrector", "fake_loss", "grad_norm_corrector"))


def test_scheduler_is_boots_conversion_at_t_T():
    """BootOneStepScheduler.step is boot.TeacherStudent's to_x0 at the fixed alpha_T, sigma_T, bit for bit."""
    from boot_diffusers import BootOneStepScheduler
    schedule = boot.Schedule.discrete(torch.linspace(0.99, 0.01, 1000))
    pred, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for kind in boot.PREDICTIONS:
        g = boot.TeacherStudent(lambda x, time, cond: pred, schedule, prediction=kind)
        scheduler = BootOneStepScheduler(prediction_type=kind, alpha_T=g.alpha_a, sigma_T=g.sigma_a)
        assert scheduler.config.guidance_range is None  # as in a config written before the trained range was recorded
        with pytest.warns(UserWarning, match="num_inference_steps=50: a BOOT student draws in one step"):
            scheduler.set_timesteps(50)
        assert scheduler.timesteps.tolist() == [-1] == schedule.network_time(torch.zeros(1)).tolist()
        y = scheduler.step(pred.half(), scheduler.timesteps[0], eps.half()).prev_sample
        assert y.dtype == torch.float16
        torch.testing.assert_close(scheduler.step(pred, -1, eps).prev_sample, g(eps, torch.zeros(2)), rtol=0, atol=0)


@pytest.mark.parametrize("prediction, zero_snr", [("epsilon", False), ("v_prediction", False), ("v_prediction", True),
                                                 ("sample", False)])
def test_the_stock_one_step_scheduler_draws_the_student_at_t_0(prediction, zero_snr, parts):
    """boot_diffusers.one_step_scheduler (diffusers' LCMScheduler) and the UNet retimed to its timestep, stepped as
    StableDiffusionPipeline steps them, draw g(eps, 0) of the student as trained, its guidance input included;
    retimed back, the UNet is the student again."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from boot_diffusers import BOOT_KEY, one_step_scheduler, retime
    teacher = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            rescale_betas_zero_snr=zero_snr, prediction_type=prediction)
    schedule = boot.Schedule.discrete(teacher.alphas_cumprod)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**parts.unet.config, "time_cond_proj_dim": sd.GUIDANCE_DIM}).eval()
    w, eps, cond = torch.full((2,), 3.0), torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    g = sd.student_fn(unet, schedule, prediction, w)
    with torch.no_grad():
        want = g(eps, torch.zeros(2), cond)
    scheduler = one_step_scheduler(teacher.config, prediction_type=prediction, alpha_T=g.alpha_a, sigma_T=g.sigma_a,
                                   guidance_range=[1.0, 5.0], guidance_scale=3.0)
    facts = scheduler.config[BOOT_KEY]
    assert (facts["unet_timestep"], facts["trained_timestep"]) == (999, -1) and facts["guidance_range"] == [1.0, 5.0]
    retime(unet, old=facts["trained_timestep"], new=facts["unet_timestep"])
    scheduler.set_timesteps(1)
    (t,) = scheduler.timesteps
    with torch.no_grad():
        out = unet(eps, t, encoder_hidden_states=cond, timestep_cond=sd.guidance_embedding(w, sd.GUIDANCE_DIM)).sample
        got = scheduler.step(out, t, eps).prev_sample
        tol = 1e-5 * want.abs().max().item() / (g.alpha_a if prediction == "epsilon" else 1)
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
        retime(unet, old=facts["unet_timestep"], new=facts["trained_timestep"])
        torch.testing.assert_close(g(eps, torch.zeros(2), cond), want, rtol=0, atol=tol)


def test_the_stock_one_step_scheduler_refuses_a_schedule_it_cannot_step():
    """A student whose alpha_T is not the stock scheduler's alphas_cumprod[n - 1]: one line, not a wrong picture."""
    from diffusers import DDIMScheduler
    from boot_diffusers import UnsupportedTeacher, one_step_scheduler
    config = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    with pytest.raises(UnsupportedTeacher, match="LCMScheduler's one step at timestep \\[999\\] .* is not the student's t = T"):
        one_step_scheduler(config, prediction_type="epsilon", alpha_T=0.5, sigma_T=0.75 ** 0.5, guidance_range=[1, 1],
                           guidance_scale=1)


def test_model_card(tiny_sd, prompts, tmp_path):
    """pipeline/README.md: a model card whose YAML header the hub reads, and whose snippet runs as written, at the
    trained resolution by default (32 here; the teacher's own is 16)."""
    from huggingface_hub import ModelCard
    run = tmp_path / "run"
    args = train_args(tiny_sd, prompts, run, "--guidance-scale", "3", "--validate-every", "1000", "--resolution", "32")
    train_sd.main(args)
    hub_card = ModelCard.load(run / "pipeline" / "README.md")
    assert hub_card.data.library_name == "diffusers" and "boot" in hub_card.data.tags
    assert hub_card.data.base_model is None  # a local teacher folder is no hub id
    assert tiny_sd in hub_card.text and "w = 3.0 only" in hub_card.text and "BootPipeline refuses any other" in hub_card.text
    assert hub_card.text.count("Heun-4 on the quadratic grid") == 2  # the fixed point, in the grid and validation rows
    assert "Pass `num_inference_steps=1` and a `guidance_scale` of the trained range" in hub_card.text
    assert "at timestep 999 (n - 1)" in hub_card.text and "alpha_T = " in hub_card.text
    snippet = hub_card.text.split("```python\n")[1].split("```")[0]
    assert snippet == card.diffusers_snippet(str(run / "pipeline"), 3.0)
    scope = {}
    exec(snippet, scope)
    assert len(scope["images"]) == 1 and scope["images"][0].size == (32, 32)
    meta = json.loads((run / "boot_sd.json").read_text())
    g = sd.student_fn(scope["pipe"].unet, boot.Schedule.discrete([0.9, 0.5]), "epsilon")
    hub = ModelCard(card.model_card({**meta, "teacher": "org/model"}, "pipeline", g))
    assert hub.data.base_model == "org/model"


def test_time_limit_stops_the_run_as_at_its_last_step_and_resume_goes_on_without_it(tiny_sd, prompts, tmp_path):
    """--time-limit (a job's limit, bench/race.py's equal seconds): no step starts after it; the run ends as at its
    last step (budget logged, checkpoint, pipeline), and --resume without it (a RESUMABLE flag) reaches --steps."""
    run = tmp_path / "run"
    flags = ["--steps", "50", "--validate-every", "1000"]
    train_sd.main(train_args(tiny_sd, prompts, run, *flags, "--time-limit", "1e-6"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    ran_out = [r for r in records if "budget ran out" in r.get("event", "")]
    assert len(ran_out) == 1 and ran_out[0]["step"] < 50
    stopped = json.loads((run / "boot_sd.json").read_text())["steps"]
    assert stopped == ran_out[0]["step"] and (run / "checkpoints" / f"step-{stopped:08d}").is_dir()
    assert (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    train_sd.main(train_args(tiny_sd, prompts, run, *flags, "--resume"))
    assert json.loads((run / "boot_sd.json").read_text())["steps"] == 50
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 50


# ----------------------------------------------------------------------------------------------------
# --resume keeps the recipe: every flag outside train_sd.RESUMABLE is the run's own.


@pytest.fixture(scope="module")
def resumable(tiny_sd, tmp_path_factory):
    """A run stopped after its first step (checkpoint step-00000001), and its prompts file."""
    root = tmp_path_factory.mktemp("resumable")
    (root / "prompts.txt").write_text("a red cat\nblue sky\n")
    train_sd.main(train_args(tiny_sd, root / "prompts.txt", root / "run", "--steps", "1", "--validate-every", "1000"))
    return root


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flag, value, started", [
    ("--lr", "1e-3", "0.0003"), ("--lr-schedule", "cosine", "constant"), ("--bootstrap-steps", "8", "4"),
    ("--spacing", "t", "quadratic"), ("--order", "1", "2"), ("--batch-size", "1", "2"), ("--seed", "1", "0"),
    ("--clip", "0.5", "1.0"), ("--guidance-scale", "3", "7.5"), ("--guidance-range", "1,4", "none"),
    ("--ema", "0.9", "none"), ("--resolution", "32", "16"), ("--dtype", "bf16", "fp32"), ("--prompts", None, None),
    ("--teacher", None, None)])
def test_resume_refuses_every_change_of_the_recipe_in_one_line(flag, value, started, resumable, tiny_sd, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(resumable / "run", run)
    before = files_of(run)
    if flag == "--prompts":
        value, started = tmp_path / "other.txt", resumable / "prompts.txt"
        value.write_text("a red cat\nblue sky\n")  # the same text, another file: the run cannot know
    if flag == "--teacher":
        value, started = tmp_path / "teacher", Path(tiny_sd)
        shutil.copytree(tiny_sd, value)
    shown = {"--guidance-range": "1.0,4.0", "--guidance-scale": "3.0", "--lr": "0.001"}.get(flag, value)
    argv = train_args(tiny_sd, resumable / "prompts.txt", run, "--steps", "2", "--validate-every", "1000", "--resume",
                      flag, value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_sd.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {flag} {shown}: this run was started with {started} "
                             f"({run / 'checkpoints' / 'step-00000001'}); --resume continues a run with its own flags")
    assert files_of(run) == before  # nothing written


def test_a_resumed_run_records_the_recipe_its_optimizer_runs(resumable, tiny_sd, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(resumable / "run", run)
    train_sd.main(train_args(tiny_sd, resumable / "prompts.txt", run, "--steps", "2", "--validate-every", "1000",
                             "--resume"))
    meta = json.loads((run / "boot_sd.json").read_text())
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert meta["steps"] == last["step"] == 2 and meta["lr"] == last["lr"] == train_sd.LR_SMALL
    assert meta["prompts"] == str((resumable / "prompts.txt").resolve()) and meta["clip"] == 1.0
    assert f"AdamW lr {meta['lr']} (constant)" in (run / "pipeline" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------------
# Judged figures, with a digit teacher of teachers/train_teacher.py --kind text (barely trained: its numbers mean nothing).


DIGIT_FLAGS = ["--kind", "text", "--vae-steps", "3", "--steps", "3", "--judge-steps", "2", "--ckpt-every", "2",
               "--device", "cpu"]
JUDGED = ["--dtype", "fp32", "--eval-samples", "10"]  # 10 samples: prompts.txt in turn names every digit once


@pytest.fixture(scope="module")
def digit_teacher(tmp_path_factory) -> Path:
    """The teacher, its judge/ and prompts.txt in seconds; its own figures stage skipped (the test recomputes)."""
    import train_teacher
    out = tmp_path_factory.mktemp("digits") / "mnist-t2i"
    for stage in ("judge", "vae", "teacher"):
        train_teacher.main(["--out", str(out), "--only", stage, *DIGIT_FLAGS])
    return out


def digit_args(teacher: Path, out: Path, *extra):
    return train_args(str(teacher), str(teacher / "prompts.txt"), out, "--validate-every", "1000", *extra)


@pytest.fixture(scope="module")
def digit_run(digit_teacher, tmp_path_factory) -> Path:
    """Two steps over w in [1, 5] with a target network; the judge is the teacher folder's own (the default)."""
    run = tmp_path_factory.mktemp("digit-run") / "run"
    train_sd.main(digit_args(digit_teacher, run, "--guidance-range", "1,5", "--ema", "0.9", *JUDGED))
    return run


def test_the_judge_runs_without_autograd():
    """judge_guided draws through the student: its no_grad once slid onto a function written between the two."""
    seen = []

    class Probe:  # judge_guided's first read of its teacher says what mode it runs in, then stops it
        @property
        def teacher(self):
            seen.append(torch.is_grad_enabled())
            raise LookupError("probe")
    with pytest.raises(LookupError):
        judging.judge_guided(Probe(), None, None, [], torch.zeros(1), ws=[1])
    assert torch.is_grad_enabled() and seen == [False]


def test_judged_figures_of_the_student_and_every_ddim_k_per_w(digit_run, digit_teacher):
    judged = json.loads((digit_run / "boot_sd.json").read_text())["judged"]
    assert (judged["samples"], judged["seed"], judged["step"], judged["dtype"]) == (10, judging.JUDGE_SEED, 2, "fp32")
    assert judged["judge"] == str((digit_teacher / "judge").resolve())
    assert list(judged["guidance"]) == ["1", "2", "3", "5"]  # digits.FIGURE_WS, all inside [1, 5]
    for w, row in judged["guidance"].items():
        assert list(row["teacher_ddim"]) == [str(k) for k in digits.FIGURE_KS] == ["1", "2", "4", "8", "16", "50"]
        for figures in [row["student"], *row["teacher_ddim"].values()]:
            assert 0 <= figures["accuracy"] <= 1 and math.isfinite(figures["fd"]) and figures["fd"] >= 0
        picture = Image.open(digit_run / row["picture"])
        size, _ = pictures.layout(RES, RES, 5, 10, title=True, col_labels=True)  # 5 rows, 10 digits, labelled
        assert row["picture"] == f"figures/judged-w{w}.png" and picture.size == size and size[0] >= pictures.MIN_WIDTH
    card = (digit_run / "pipeline" / "README.md").read_text()
    assert "| judged | prompted-digit accuracy and FD" in card and "w = 5:" in card


def test_judged_figures_are_the_students_and_teachers_own_from_the_same_noise(digit_run, digit_teacher):
    """Recomputed here: the same noise (seed 1), prompts in turn, decoded to gray, scored by the judge. The bottom
    row of each picture is the student's sample of each digit, enlarged."""
    from bootkit import metrics
    judged = json.loads((digit_run / "boot_sd.json").read_text())["judged"]
    device = torch.device("cpu")
    parts = sd.load_teacher(str(digit_teacher), torch.float32, device)
    schedule = parts.teacher.schedule
    judge, *reference = metrics.load_judge(digit_teacher / "judge")
    listed = sd.read_prompts(digit_teacher / "prompts.txt")
    texts = listed.read(range(10))
    labels = torch.tensor([digits.prompt_digit(t) for t in texts])
    assert labels.tolist() == list(range(10))
    encode = sd.PromptEncoder(parts, device, warn=False)
    cond, null = encode(texts), encode([""])
    eps = torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    student = sd.load_student(digit_run, "--evaluate", device)

    def score(latents):
        x = digits.decode(parts.vae, latents)
        return x, {"accuracy": metrics.judge_classes(judge, x).eq(labels).double().mean().item(),
                   "fd": metrics.judge_fd(judge, x, *reference)}
    net = sd.teacher_fn(parts.unet, schedule, parts.teacher.prediction)
    for w, row in judged["guidance"].items():
        g = sd.student_fn(student, schedule, parts.teacher.prediction, torch.full((10,), float(w)))
        mine, figures = score(boot.sample_student(g, eps, cond))
        # the run judged its live student; load_student's differs by the rounding of one bias (boot_diffusers.retime)
        assert row["student"] == pytest.approx(figures, rel=1e-6)
        teacher = parts.teacher.finish(boot.guided(net, scale=float(w), null_cond=null))
        for k in (1, 4) if w == "3" else (1,):
            _, figures = score(boot.ddim_sample(teacher, eps, schedule=schedule, steps=k, cond=cond))
            assert row["teacher_ddim"][str(k)] == pytest.approx(figures, rel=1e-9)
        assert row["student"]["fd"] != row["teacher_ddim"]["1"]["fd"]  # the figures tell the samplers apart
        picture = np.asarray(Image.open(digit_run / row["picture"]))
        pixels = ((mine[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        _, boxes = pictures.layout(RES, RES, 5, 10, title=True, col_labels=True)
        for digit, (x0, y0, x1, y1) in enumerate(boxes[4]):  # prompt i names digit i: column i is sample i
            zoom = (x1 - x0) // RES
            np.testing.assert_array_equal(picture[y0:y1:zoom, x0:x1:zoom, 0], pixels[digit])


def test_a_lora_runs_judged_teacher_is_the_teacher(digit_teacher, tmp_path):
    """A LoRA student shares its module with the teacher: the judged teacher rows are the teacher's own (a full run's,
    same noise), the student's row its fused copy's, as --evaluate redoes it from pipeline/."""
    runs = {}
    for name, flags in (("full", []), ("lora", ["--lora-rank", "2", "--lr", "1e-2"])):
        train_sd.main(digit_args(digit_teacher, tmp_path / name, "--guidance-scale", "3", "--steps", "1", *flags, *JUDGED))
        runs[name] = json.loads((tmp_path / name / "boot_sd.json").read_text())["judged"]["guidance"]["3"]
    assert runs["lora"]["teacher_ddim"] == runs["full"]["teacher_ddim"]
    train_sd.main(["--evaluate", str(tmp_path / "lora"), "--prompts", str(digit_teacher / "prompts.txt"), "--device",
                   "cpu", *JUDGED])
    redone = json.loads((tmp_path / "lora" / "boot_sd.json").read_text())["judged"]["guidance"]["3"]
    assert redone["teacher_ddim"] == runs["full"]["teacher_ddim"]
    assert redone["student"] == pytest.approx(runs["lora"]["student"], rel=1e-6)


def test_evaluate_redoes_a_finished_runs_judged_figures_at_its_one_w(digit_teacher, tmp_path):
    run = tmp_path / "run"
    train_sd.main(digit_args(digit_teacher, run, "--guidance-scale", "3", "--steps", "1", *JUDGED))
    trained = json.loads((run / "boot_sd.json").read_text())["judged"]
    assert list(trained["guidance"]) == ["3"] and [p.name for p in (run / "figures").iterdir()] == ["judged-w3.png"]
    picture = np.asarray(Image.open(run / "figures" / "judged-w3.png"), dtype=int)
    (run / "figures" / "judged-w3.png").unlink()
    train_sd.main(["--evaluate", str(run), "--prompts", str(digit_teacher / "prompts.txt"), "--device", "cpu", *JUDGED])
    redone = json.loads((run / "boot_sd.json").read_text())["judged"]
    # the exported student (pipeline/unet) is the live one to the rounding of one bias (boot_diffusers.retime)
    assert redone["guidance"]["3"]["teacher_ddim"] == trained["guidance"]["3"]["teacher_ddim"]
    assert redone["guidance"]["3"]["student"] == pytest.approx(trained["guidance"]["3"]["student"], rel=1e-6)
    assert np.abs(np.asarray(Image.open(run / "figures" / "judged-w3.png"), dtype=int) - picture).max() <= 1


@pytest.mark.parametrize("flags, note", [([], "names no single digit"), (["--judge", "none"], None)])
def test_no_judged_figures_without_digit_prompts_or_with_judge_none(flags, note, digit_teacher, prompts, tmp_path, capsys):
    train_sd.main(train_args(str(digit_teacher), prompts, tmp_path / "run", "--steps", "1", "--validate-every", "1000",
                             *flags))
    assert "judged" not in json.loads((tmp_path / "run" / "boot_sd.json").read_text())
    assert not (tmp_path / "run" / "figures").exists()
    said = capsys.readouterr().out
    assert ("no judged evaluation" in said) == bool(note) and (note or "") in said


# ----------------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, a non-zero exit, nothing written or overwritten.


BAD_PROMPTS = {
    "missing": (None, "no such file"),
    "empty": (b"", "empty"),
    "only comments": (b"# one\n\n   \n# two\n", "no prompt"),
    "not utf-8": (b"caf\xe9 au lait\n", "not UTF-8"),
    "unreadable": ("folder", "cannot be read"),
}


def check_failure(status, err, expected, out: Path, before=None):
    assert status != 0 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    if before is None:
        assert not out.exists()
    else:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("case", BAD_PROMPTS)
def test_bad_prompts_file(case, tmp_path):
    content, expected = BAD_PROMPTS[case]
    path = tmp_path / "prompts.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    status, err = run_cli("--prompts", path, "--out", tmp_path / "run", "--device", "cpu")
    check_failure(status, err, expected, tmp_path / "run")


@pytest.mark.parametrize("flags, expected", [(["--steps", "0"], "--steps"),
                                             (["--guidance-range", "5,2"], "--guidance-range"),
                                             (["--guidance-scale", "9", "--guidance-range", "1,4"], "outside"),
                                             (["--dtype", "fp16"], "--dtype fp16 trains without loss scaling")])
def test_out_of_range_flags(flags, expected, prompts, tmp_path):
    status, err = run_cli("--prompts", prompts, "--out", tmp_path / "run", *flags)
    check_failure(status, err, expected, tmp_path / "run")


def test_existing_run_is_not_overwritten(prompts, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("earlier run\n")
    status, err = run_cli("--prompts", prompts, "--out", tmp_path / "run", "--device", "cpu")
    check_failure(status, err, "not empty", tmp_path / "run", before={"log.jsonl": b"earlier run\n"})


def test_a_hub_teacher_out_of_reach_says_so(prompts, tmp_path):
    """HF_HUB_OFFLINE=1 (as in every test) and nothing cached: the cause, not diffusers' "does not appear to have a
    file named scheduler_config.json", and what to do instead."""
    status, err = run_cli("--teacher", "nobody/no-such-model", "--prompts", prompts, "--out", tmp_path / "run",
                          "--device", "cpu")
    check_failure(status, err, "--teacher nobody/no-such-model: the hub could not be reached (HF_HUB_OFFLINE is set) "
                               "and nothing of it is cached; pass a local folder in diffusers' layout", tmp_path / "run")
    assert status == 2
    from diffusers import AutoencoderTiny  # the other loads (the teacher's parts, --tiny-vae) say it too
    with pytest.raises(train_sd.UsageError, match=r"^--tiny-vae nobody/taesd does not load: the hub could not be "
                                                  r"reached \(HF_HUB_OFFLINE is set\) and nothing of it is cached"):
        sd.loaded("--tiny-vae nobody/taesd", lambda: AutoencoderTiny.from_pretrained("nobody/taesd"))


def test_teacher_that_is_not_a_diffusers_model(prompts, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.bin").write_bytes(b"not a model")
    status, err = run_cli("--teacher", tmp_path / "junk", "--prompts", prompts, "--out", tmp_path / "run",
                          "--device", "cpu")
    check_failure(status, err, "--teacher", tmp_path / "run")
    assert "does not load" in err


def test_teacher_without_a_tokenizer(tiny_sd, prompts, tmp_path, capsys):
    """transformers makes an empty tokenizer where its files are missing: that must fail too, not train on it."""
    import shutil
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_sd, teacher, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(SystemExit) as stop:
        train_sd.main(train_args(str(teacher), prompts, tmp_path / "run"))
    check_failure(stop.value.code, capsys.readouterr().err, "its tokenizer does not load", tmp_path / "run")


@pytest.mark.parametrize("flags, expected", [(["--bootstrap-steps", "2000"], "--bootstrap-steps"),
                                             (["--resolution", "10"], "--resolution")])
def test_flags_out_of_the_teachers_range(flags, expected, tiny_sd, prompts, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # in-process: the same cli wrapper, without loading diffusers again
        train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run") + flags)
    check_failure(stop.value.code, capsys.readouterr().err, expected, tmp_path / "run")


@pytest.mark.parametrize("shape, lora_rank", [("sd15", 0), ("sdxl", 0), ("sdxl", 4)])
def test_bench_runs_and_reports_every_part(shape, lora_rank):
    import sd_step
    result = sd_step.run("cpu", batch=1, tiny=True, reps=1, shape=shape, lora_rank=lora_rank)
    parts = result["teacher_ms"] + result["student_call_ms"] + result["student_train_ms"]
    assert result["sum_ms"] == pytest.approx(parts)
    assert result["step_ms"] > 0 and result["peak_gib"] is None and "| whole BOOT step |" in sd_step.table(result)
    assert (0 < result["trained_m"] < result["params_m"]) if lora_rank else result["trained_m"] == result["params_m"]


def test_unet_that_needs_more_than_text_is_refused_before_anything_loads(tiny_sd, prompts, tmp_path, capsys):
    """A UNet conditioned on more than text and SDXL's time ids (Kandinsky's image embeddings, a class label) is
    refused from its config: here no weights or text encoder exist at all."""
    import shutil
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_sd, teacher, ignore=shutil.ignore_patterns("*.safetensors", "text_encoder"))
    config = json.loads((teacher / "unet" / "config.json").read_text())
    (teacher / "unet" / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_image"}))
    with pytest.raises(SystemExit) as stop:
        train_sd.main(train_args(str(teacher), prompts, tmp_path / "run"))
    check_failure(stop.value.code, capsys.readouterr().err, "addition_embed_type='text_image'", tmp_path / "run")


def test_an_sdxl_refiner_is_refused_before_its_unet_loads(tiny_sdxl, prompts, tmp_path, capsys):
    """A refiner's UNet reads five time ids (an aesthetic score): one line, before its weights load."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_sdxl, teacher)
    (teacher / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # refused before its weights are looked for
    config = json.loads((teacher / "unet" / "config.json").read_text())
    (teacher / "unet" / "config.json").write_text(json.dumps({**config, "projection_class_embeddings_input_dim": 5 * 8 + 32}))
    with pytest.raises(SystemExit) as stop:
        train_sd.main(train_args(str(teacher), prompts, tmp_path / "run"))
    check_failure(stop.value.code, capsys.readouterr().err, "its UNet reads 72 added features, not 6 time ids and the "
                  "pooled text (an SDXL refiner's aesthetic score?)", tmp_path / "run")


@pytest.mark.parametrize("trained, w", [(["--guidance-range", "1,4"], "4.5"), (["--guidance-scale", "3"], "4")])
def test_sample_refuses_a_w_outside_the_trained_range(trained, w, tiny_sd, prompts, tmp_path, capsys):
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *trained, "--steps", "1", "--validate-every", "1000"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_sd.main(["--sample", str(tmp_path / "run"), "--prompts", prompts, "--out", str(tmp_path / "images"),
                       "--device", "cpu", "--guidance-scale", w])
    check_failure(stop.value.code, capsys.readouterr().err, f"--guidance-scale {float(w)}", tmp_path / "images")


def test_transformers_4_without_set_tqdm_hook(tiny_sd, monkeypatch):
    from transformers.utils import logging as transformers_logging
    monkeypatch.delattr(transformers_logging, "set_tqdm_hook", raising=False)
    assert sd.load_teacher(tiny_sd, torch.float32, torch.device("cpu"), unet=False).vae is not None


def test_too_many_validation_prompts(prompts, tmp_path, capsys):
    many = tmp_path / "many.txt"
    many.write_text("".join(f"prompt {i}\n" for i in range(train_sd.MAX_VALIDATION_IMAGES + 1)))
    with pytest.raises(SystemExit) as stop:
        train_sd.main(["--prompts", prompts, "--validation-prompts", str(many), "--out", str(tmp_path / "run")])
    check_failure(stop.value.code, capsys.readouterr().err, "at most 16", tmp_path / "run")


@pytest.mark.parametrize("case", ["prompts without a digit", "no judge there", "judge of another size", "--sample",
                                  "--evaluate with --judge none"])
def test_bad_judge(case, digit_teacher, tiny_sd, prompts, tmp_path, capsys):
    """A --judge that cannot judge: one line, exit status 2, before anything is written."""
    judge, digit_prompts, run = str(digit_teacher / "judge"), str(digit_teacher / "prompts.txt"), tmp_path / "run"
    before = None
    if case == "--evaluate with --judge none":  # a finished run, as far as its boot_sd.json goes
        run.mkdir()
        (run / "boot_sd.json").write_text(json.dumps({"teacher": str(digit_teacher)}))
        before = {"boot_sd.json": (run / "boot_sd.json").read_bytes()}
    argv, expected = {
        "prompts without a digit": (train_args(str(digit_teacher), prompts, run, "--judge", judge), "names no single digit"),
        "no judge there": (train_args(str(digit_teacher), digit_prompts, run, "--judge", tmp_path / "nowhere"),
                           "does not load"),
        "judge of another size": (train_args(tiny_sd, digit_prompts, run, "--judge", judge, "--resolution", "32"),
                                  "reads 16-pixel images, this run draws 32"),
        "--sample": (["--sample", str(run), "--prompts", digit_prompts, "--judge", judge], "not of --sample"),
        "--evaluate with --judge none": (["--evaluate", str(run), "--prompts", digit_prompts, "--judge", "none",
                                          "--device", "cpu"], "nothing to evaluate"),
    }[case]
    with pytest.raises(SystemExit) as stop:
        train_sd.main(argv)
    assert stop.value.code == 2
    check_failure(stop.value.code, capsys.readouterr().err, expected, run, before=before)
