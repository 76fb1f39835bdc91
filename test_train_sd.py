"""Tests of train_sd.py, offline on the CPU: a tiny random Stable Diffusion, saved to a temp folder, is the teacher."""
import json
import os
import string
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub
os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend with each other on a shared machine

import pytest
import torch
from PIL import Image

import boot
import train_sd

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
RES = 16  # pixels; the tiny VAE halves it, so the latents are 8 x 8


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    """A random SD-shaped pipeline saved in diffusers format, with a tokenizer from a hand-written vocabulary."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    letters = list(string.ascii_lowercase)
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters])}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    tokenizer = CLIPTokenizer(vocab=str(root / "vocab.json"), merges=str(root / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8,
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                  up_block_types=("UpDecoderBlock2D",) * 2, sample_size=RES).save_pretrained(root / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False).save_pretrained(root / "scheduler")  # SD 1.x's schedule
    AutoencoderTiny(encoder_block_out_channels=(32, 32), decoder_block_out_channels=(32, 32), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1)).save_pretrained(root / "taesd")
    return str(root)


@pytest.fixture(scope="session")
def sd(tiny_sd):
    return train_sd.load_teacher(tiny_sd, torch.float32, torch.device("cpu"))


@pytest.fixture
def prompts(tmp_path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\n# a comment\n\n  a dog on a hill  \nblue sky\n")
    return str(path)


def train_args(teacher, prompts, out, *extra):
    return ["--teacher", teacher, "--prompts", prompts, "--out", str(out), "--device", "cpu", "--resolution", str(RES),
            "--batch-size", "2", "--bootstrap-steps", "4", "--steps", "2", *extra]


def run_cli(*args):
    """train_sd.py in its own process: (exit status, stderr)."""
    done = subprocess.run([sys.executable, str(HERE / "train_sd.py"), *map(str, args)], cwd=HERE, capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stderr


# ----------------------------------------------------------------------------------------------------
# Prompts.


def test_prompts_skip_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffun chat\r\n\r\n# skipped\r\n   \r\n  deux chiens  \r\n".encode())
    assert train_sd.read_prompts(path) == ["un chat", "deux chiens"]


def test_long_prompts_are_truncated_with_one_warning(sd, capsys):
    d = train_sd.runtime.Dist(0, 1, torch.device("cpu"))
    prompts = ["a cat", "a very long prompt about many things", "another prompt far too long for it"]
    embeddings, null = train_sd.encode(sd, prompts, d)
    assert embeddings.shape == (3, 16, 32) and null.shape == (1, 16, 32)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "2 prompt(s)" in warnings[0] and "truncated" in warnings[0]


# ----------------------------------------------------------------------------------------------------
# The student's parameterization and the guidance convention.


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_student_starts_as_the_teacher_at_T(tiny_sd, sd, prediction):
    """The boundary: at initialisation g(eps, T, c) = f(eps, T, c), for any w fed to the student."""
    schedule = boot.Schedule.discrete(sd.scheduler.alphas_cumprod)
    student = train_sd.make_student(tiny_sd, guidance=True)
    eps, cond, T = torch.randn(3, 4, 8, 8), torch.randn(3, 16, 32), torch.ones(3)
    g = train_sd.student_fn(student, schedule, prediction, torch.tensor([1.0, 4.0, 9.0]))
    f = train_sd.teacher_fn(sd.unet, schedule, prediction)
    with torch.no_grad():
        torch.testing.assert_close(g(eps, T, cond), f(eps, T, cond))
        assert not torch.allclose(g(eps, T / 2, cond), f(eps, T, cond))  # the time input matters


def test_guidance_embedding_is_lcms_embedding_of_w_itself():
    from diffusers import LatentConsistencyModelPipeline
    w = torch.tensor([0.0, 1.0, 2.5, 7.5])
    lcm = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=train_sd.GUIDANCE_DIM)
    torch.testing.assert_close(train_sd.guidance_embedding(w, train_sd.GUIDANCE_DIM), lcm, atol=2e-3, rtol=0)


def test_student_reads_w(tiny_sd, sd):
    schedule = boot.Schedule.discrete(sd.scheduler.alphas_cumprod)
    student = train_sd.make_student(tiny_sd, guidance=True)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight)  # as after some training
    seen = []
    student.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["timestep_cond"]), with_kwargs=True)
    eps, cond, t = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32), torch.full((2,), 0.5)
    w1, w8 = torch.full((2,), 1.0), torch.full((2,), 8.0)
    with torch.no_grad():
        y1 = train_sd.student_fn(student, schedule, "epsilon", w1)(eps, t, cond)
        y8 = train_sd.student_fn(student, schedule, "epsilon", w8)(eps, t, cond)
    torch.testing.assert_close(seen[0], train_sd.guidance_embedding(w1, train_sd.GUIDANCE_DIM))
    assert not torch.allclose(y1, y8)


def test_each_examples_w_guides_its_target_and_enters_the_student(tiny_sd, prompts, tmp_path, monkeypatch):
    teacher_w, student_w = [], []
    guided, student_fn = boot.guided, train_sd.student_fn

    def spy_guided(teacher, *, scale, null_cond):
        teacher_w.append(scale)
        return guided(teacher, scale=scale, null_cond=null_cond)

    def spy_student_fn(model, schedule, prediction, w=None):
        student_w.append(w)
        return student_fn(model, schedule, prediction, w)
    monkeypatch.setattr(boot, "guided", spy_guided)
    monkeypatch.setattr(train_sd, "student_fn", spy_student_fn)
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--guidance-range", "1,4", "--validate-every", "1000"))
    assert len(teacher_w) == len(student_w) == 2  # one loss per step, no validation
    for t_w, s_w in zip(teacher_w, student_w):
        assert s_w is t_w and s_w.shape == (2,) and ((1 <= s_w) & (s_w <= 4)).all() and s_w[0] != s_w[1]


# ----------------------------------------------------------------------------------------------------
# Training, resuming, sampling.


def test_train_writes_a_student_that_reloads_and_resumes_exactly(tiny_sd, prompts, tmp_path, capsys):
    from diffusers import UNet2DConditionModel
    args = ["--guidance-range", "1,4", "--validate-every", "2", "--ckpt-every", "1"]
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", *args))
    run = tmp_path / "run"
    student = UNet2DConditionModel.from_pretrained(run / "student")
    assert (run / "student" / "diffusion_pytorch_model.safetensors").exists()
    assert student.config.time_cond_proj_dim == train_sd.GUIDANCE_DIM
    validation = Image.open(run / "validation" / "step-00000002.png")
    assert validation.size == (3 * RES, 2 * RES)  # 3 prompts; the teacher's row and the student's
    meta = json.loads((run / "boot_sd.json").read_text())
    assert meta["guidance_range"] == [1, 4] and meta["guidance_scale"] == 2.5 and meta["steps"] == 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and torch.isfinite(torch.tensor(records[-1]["loss"]))

    train_sd.main(train_args(tiny_sd, prompts, run, *args, "--steps", "3", "--resume"))
    assert "resumed from" in capsys.readouterr().out
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "straight", *args, "--steps", "3"))
    resumed = UNet2DConditionModel.from_pretrained(run / "student").state_dict()
    straight = UNet2DConditionModel.from_pretrained(tmp_path / "straight" / "student").state_dict()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_sample_draws_each_batch_in_one_unet_call(tiny_sd, prompts, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    train_sd.main(train_args(tiny_sd, prompts, tmp_path / "run", "--guidance-range", "1,4", "--validate-every", "1000"))
    calls, forward = [], UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    train_sd.main(["--sample", str(tmp_path / "run"), "--prompts", prompts, "--out", str(tmp_path / "images"),
                   "--device", "cpu", "--batch-size", "2", "--guidance-scale", "3",
                   "--tiny-vae", str(Path(tiny_sd) / "taesd")])
    images = sorted((tmp_path / "images").glob("*.png"))
    assert [p.name for p in images] == ["00000.png", "00001.png", "00002.png"] and len(calls) == 2  # batches of 2, 1
    assert all(Image.open(p).size == (RES, RES) for p in images)


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
                                             (["--guidance-scale", "9", "--guidance-range", "1,4"], "outside")])
def test_out_of_range_flags(flags, expected, prompts, tmp_path):
    status, err = run_cli("--prompts", prompts, "--out", tmp_path / "run", *flags)
    check_failure(status, err, expected, tmp_path / "run")


def test_existing_run_is_not_overwritten(prompts, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("earlier run\n")
    status, err = run_cli("--prompts", prompts, "--out", tmp_path / "run", "--device", "cpu")
    check_failure(status, err, "not empty", tmp_path / "run", before={"log.jsonl": b"earlier run\n"})


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


def test_bench_runs_and_reports_every_part():
    import bench_sd
    result = bench_sd.run("cpu", batch=1, tiny=True, reps=1)
    parts = result["teacher_ms"] + result["student_call_ms"] + result["student_train_ms"]
    assert result["sum_ms"] == pytest.approx(parts)
    assert result["step_ms"] > 0 and result["peak_gib"] is None and "| whole BOOT step |" in bench_sd.table(result)
