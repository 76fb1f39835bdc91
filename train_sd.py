"""train_sd.py: BOOT for Stable Diffusion from a prompts file alone, and one-call sampling with the student.

    python train_sd.py --prompts prompts.txt                        # SD 1.5 teacher, writes runs/sd
    python train_sd.py --prompts prompts.txt --guidance-range 2,8   # one student for every w in [2, 8]
    python train_sd.py --sample runs/sd --prompts mine.txt          # one UNet call per batch of images
    python train_sd.py --evaluate runs/mnist --prompts teachers/mnist-t2i/prompts.txt   # judged figures of a digit run

boot.py is the algorithm, runtime.py the run (checkpoints, --resume, signals, non-finite steps, torchrun);
this file adapts diffusers to them. The student is a copy of the teacher's UNet that reads eps in place of
x_t and trains in the VAE's latent space (BOOT.md section 4). Conventions, stated here once:
- Time: boot.Schedule.discrete(alphas_cumprod), t = (i + 1) / n is the teacher's timestep i, t = 0 the
  clean latent. The student reads the timestep t n - 1 unrounded (-1 at t = 0; Schedule.network_time).
- Student output (boot.TeacherStudent): y = to_x0(unet(eps, t n - 1, c), x_t = eps) with the teacher's
  prediction type at the FIXED alpha_T, sigma_T of t = T, in float32. Starting as the teacher, g(eps, T, c) =
  f(eps, T, c).
- Guidance: diffusers' w (w = 1 is the conditional teacher). Every student has a guidance input (LCM's
  time_cond_proj_dim = 256, projection zero-initialised: it starts as the teacher for every w) that reads
  StableDiffusionPipeline's embedding of w - 1. With --guidance-range every example draws its own w, which
  guides its teacher target and enters the student; without, w is the one --guidance-scale.
- Recipe (the defaults, measured on teachers/mnist-t2i; README): no target network, Heun's teacher step on the
  quadratic grid with N = 16, a constant lr of 3e-4 for a UNet under 100 M parameters (1e-5 above: Stable
  Diffusion, unmeasured).
- diffusers: the run's student/ folder holds the UNet, a BootOneStepScheduler config (boot_diffusers.py) and
  a model card; StableDiffusionPipeline with these two draws the same images as --sample, in one UNet call.
- Prompts are read from the file when a batch needs them and encoded per batch: memory does not grow with
  the file (a million prompts cost 16 MB of offsets).
- Judged figures (a digit teacher of teachers.py --kind text, whose judge/ is a digit classifier): at the end of
  training, or with --evaluate RUN, the student's one call and the teacher's guided DDIM-k, from the same fixed
  noise and prompts, scored by the judge (prompted-digit accuracy, FD to the held-out digits), per judged w.
diffusers and transformers are imported where they are used: they take seconds, and bad input should not.
"""
import argparse
import codecs
import contextlib
import json
import math
import os
import sys
from array import array
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import boot
import runtime
from runtime import UsageError

DEFAULT_TEACHER = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GUIDANCE_DIM = 256  # width of the student's guidance embedding, as in LCM
RUN_OUTPUTS = ("checkpoints", "validation", "figures", "student", "boot_sd.json", "log.jsonl")  # --overwrite clears
VALIDATION_IMAGES = 4  # prompts of the validation picture by default (the first training prompts)
MAX_VALIDATION_IMAGES = 16  # a --validation-prompts file may hold up to this many
UNSUPPORTED_UNET = ("addition_embed_type", "class_embed_type")  # conditioning beyond text embeddings (SDXL's)
JUDGE_SEED = 1  # the noise of every judged evaluation, whatever the run's seed: teachers.py's figures' (seed 0 + 1)
JUDGE_BATCH = 250  # samples per network call in the judged evaluation, as teachers.py's figures
PICTURE_KS = (1, 4, 16, 50)  # the teacher's rows of a judged picture, above the student's
# Default --lr by the UNet's size: measured on teachers/mnist-t2i's 1 M parameters (README); at Stable Diffusion's
# 860 M, a full fine-tune's rate (not measured here: no GPU), since Adam moves every weight about lr a step.
LR_SMALL, LR_LARGE, LARGE_UNET = 3e-4, 1e-5, 100_000_000
WARMUP = 200  # steps of learning-rate warm-up of --lr-schedule cosine
EVAL_SAMPLES = {"cuda": 500, "cpu": 100}  # default --eval-samples: 500 as the teacher's figures; ~1 min on 2 CPU cores


# ----------------------------------------------------------------------------------------------------
# Input: prompts and the teacher.


class Prompts:
    """The prompts of a text file, read from it when needed: held as each one's byte offset and line number
    (16 bytes a prompt), not as text, so that a file of millions of prompts costs megabytes."""

    def __init__(self, path: Path, offsets: array, lines: array):
        self.path, self.offsets, self.lines = path, offsets, lines

    def __len__(self):
        return len(self.offsets)

    def read(self, indices) -> list:
        """The prompts at these indices, in that order."""
        with open(self.path, "rb") as f:
            texts = []
            for i in indices:
                f.seek(self.offsets[i])
                texts.append(f.readline().decode("utf-8").strip())
            return texts


def read_prompts(path, flag: str = "--prompts") -> Prompts:
    """One prompt a line, UTF-8 (a byte-order mark is fine); blank lines and # lines are skipped. The file is
    read once, here, to check it and to note where each prompt starts."""
    offsets, lines, position, blank = array("q"), array("q"), 0, True
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                skip = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
                try:
                    prompt = raw[skip:].decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    at, byte = position + skip + e.start, raw[skip + e.start]
                    raise UsageError(f"{flag} {path}: not UTF-8 text (byte {at} is {byte:#x})") from None
                if prompt and not prompt.startswith("#"):
                    offsets.append(position + skip)
                    lines.append(number)
                blank, position = blank and not prompt, position + len(raw)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise UsageError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None
    if not offsets:
        raise UsageError(f"{flag} {path}: " + ("the file is empty" if blank
                                               else "no prompt in it, only blank or # lines"))
    return Prompts(Path(path), offsets, lines)


def loaded(what: str, load):
    """load(), or one line saying what did not load and why."""
    try:
        return load()
    except Exception as e:  # whatever the reason (missing file, bad config, offline hub), the input is unusable
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{what} does not load ({reason})") from None


def check_unet_config(name: str):
    """Refuse, from its config alone (before any weights load), a UNet that needs more than text embeddings:
    this script gives the teacher and the student nothing else (SDXL's added time ids and pooled text)."""
    from diffusers import UNet2DConditionModel
    config = loaded(f"--teacher {name}: its unet", lambda: UNet2DConditionModel.load_config(name, subfolder="unet"))
    needs = [f"{key}={config[key]!r}" for key in UNSUPPORTED_UNET if config.get(key)]
    if needs:
        raise UsageError(f"--teacher {name}: its UNet needs more than text embeddings ({', '.join(needs)}, as SDXL's); "
                         "train_sd.py supports teachers conditioned on text alone (SD 1.x, SD 2.x)")


def load_teacher(name: str, dtype, device, *, unet: bool = True):
    """The frozen parts of a diffusers Stable Diffusion (hub id or folder), the UNet only if asked for (its config
    checked first). The scheduler config is read first, with its own class (boot_diffusers.read_scheduler: the
    schedule, the prediction type, x0 clipping; other families refused): sd.teacher, and sd.scheduler."""
    import boot_diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging
    read = boot_diffusers.read_scheduler(name, subfolder="scheduler", what=f"--teacher {name}")
    if unet:
        check_unet_config(name)
    # No "Loading weights" bar per model (noise before a one-line error); the hub's download bars stay.
    # transformers 4.x has no such hook and shows no such bar.
    set_tqdm_hook = getattr(transformers_logging, "set_tqdm_hook", None)
    if set_tqdm_hook is not None:
        set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    classes = dict(tokenizer=CLIPTokenizer, text_encoder=CLIPTextModel, vae=AutoencoderKL)
    if unet:
        classes["unet"] = UNet2DConditionModel
    sd = SimpleNamespace(teacher=read, scheduler=read.scheduler)
    for part, cls in classes.items():
        # Weights from safetensors only: a pickled .bin can run arbitrary code.
        kwargs = {} if part == "tokenizer" else {"torch_dtype": dtype, "use_safetensors": True}
        value = loaded(f"--teacher {name}: its {part}", lambda: cls.from_pretrained(name, subfolder=part, **kwargs))
        if isinstance(value, torch.nn.Module):
            value = value.to(device).eval().requires_grad_(False)
        setattr(sd, part, value)
    # transformers builds an empty tokenizer, rather than failing, where the tokenizer's files are missing.
    tok = sd.tokenizer
    if len(tok) <= len(tok.all_special_tokens) or tok.model_max_length > sd.text_encoder.config.max_position_embeddings:
        raise UsageError(f"--teacher {name}: its tokenizer does not load (no vocabulary, or longer than the encoder)")
    return sd


def vae_scale(vae) -> int:
    """Pixels per latent, as diffusers' pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, unet, resolution: int) -> tuple:
    """(channels, size, size) of the latents of a resolution x resolution image."""
    factor = vae_scale(vae)
    multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)  # the UNet halves the latents per level
    if resolution % multiple:
        raise UsageError(f"--resolution {resolution} must be a multiple of {multiple} for this teacher")
    return unet.config.in_channels, resolution // factor, resolution // factor


class PromptEncoder:
    """Prompts -> text embeddings (B, L, D) on the device, batch by batch, as StableDiffusionPipeline encodes them.
    Nothing is kept: memory does not grow with the prompts file. The first over-long prompt met is reported
    (once, when warn): the tokenizer truncates it."""

    def __init__(self, sd, device, *, warn: bool):
        self.tokenizer, self.text_encoder, self.device, self.warn = sd.tokenizer, sd.text_encoder, device, warn

    @torch.no_grad()
    def __call__(self, prompts: list) -> torch.Tensor:
        tok, length = self.tokenizer, self.tokenizer.model_max_length
        if self.warn:
            ids = tok(prompts, truncation=True, max_length=length + 1).input_ids  # one token more than fits: over-long
            over = [p for p, p_ids in zip(prompts, ids) if len(p_ids) > length]
            if over:
                tqdm.write(f"warning: prompts longer than the tokenizer's {length} tokens are truncated "
                           f"(reported once), first: {over[0][:60]!r}", file=sys.stderr)
                self.warn = False
        ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state


# ----------------------------------------------------------------------------------------------------
# Teacher and student as boot.py sees them.


def teacher_fn(unet, schedule: boot.Schedule, prediction: str) -> boot.Teacher:
    """f(x_t, t, c) -> x0: the teacher UNet in its own dtype; the result is in x_t's dtype (float32 in
    training), so the bootstrap target is computed in fp32."""
    def unet_call(x, timestep, cond):
        return unet(x.to(unet.dtype), timestep, encoder_hidden_states=cond.to(unet.dtype)).sample
    return boot.denoiser(unet_call, schedule, prediction=prediction)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """What StableDiffusionPipeline feeds a UNet with a guidance input: LCM's sinusoidal embedding of 1000 (w - 1),
    computed as its get_guidance_scale_embedding computes it (float32, on the CPU, the same operations), so the
    student trains on the very input the pipeline gives it. Written out: importing the pipeline would pull in
    transformers' image processors."""
    half = dim // 2
    scaled = (w - 1).float().cpu() * 1000.0
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = scaled[:, None] * freqs[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).to(w.device)  # dim is even (GUIDANCE_DIM)


def student_fn(model, schedule: boot.Schedule, prediction: str, w=None) -> boot.TeacherStudent:
    """g(eps, t, c): boot.TeacherStudent over the student UNet, to_x0(unet(eps, t n - 1, c, emb(w - 1)), x_t = eps)
    at the fixed alpha_T, sigma_T. model: the UNet or its DistributedDataParallel wrapper; w (B,) is fed when
    the UNet has a guidance input (time_cond_proj_dim)."""
    unet = getattr(model, "module", model)
    dim = unet.config.time_cond_proj_dim
    w_emb = guidance_embedding(w, dim).to(unet.dtype) if dim and w is not None else None

    def net(x, time, cond):  # float32 out: the signal, and the bootstrap target made from it, are fp32
        out = model(x.to(unet.dtype), time, encoder_hidden_states=cond.to(unet.dtype), timestep_cond=w_emb)
        return out.sample.float()
    return boot.TeacherStudent(net, schedule, prediction=prediction)


def make_student(teacher: str):
    """The teacher's UNet in float32 (the master weights), in train mode, plus a zero-initialised guidance input:
    with it StableDiffusionPipeline feeds the student w and runs no guidance of its own, whether the student
    learns one w or a range."""
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32,
                                                use_safetensors=True)
    if unet.config.time_cond_proj_dim:  # a teacher with a guidance input keeps its own
        return unet.train()
    student = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": GUIDANCE_DIM})
    for name in student.load_state_dict(unet.state_dict(), strict=False).missing_keys:  # time_embedding.cond_proj
        torch.nn.init.zeros_(student.get_parameter(name))
    return student.train()


@contextlib.contextmanager
def evaluating(module):
    """module in eval mode inside the block, then back in the mode it was in (the live student goes on training)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def lr_schedule(optimizer, args):
    """--lr-schedule cosine: WARMUP steps of linear warm-up, then a cosine decay to 0 at --steps (train_toy.py's);
    constant: lr throughout."""
    return None if args.lr_schedule == "constant" else runtime.warmup_cosine(optimizer, args.steps, WARMUP)


def resolved_dtype(name: str, device) -> str:
    """--dtype's name, auto resolved: bf16 on CUDA, fp32 elsewhere."""
    return name if name != "auto" else "bf16" if device.type == "cuda" else "fp32"


def autocast(device, dtype):
    """Mixed precision in dtype over float32 weights; none for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def boot_sd_loss(model, teacher, *, eps, cond, w, k, schedule, grid, prediction, null_cond, dtype, finish=None,
                 target=None, order=1):
    """One BOOT loss under autocast: each example's w guides its teacher target and enters the student.
    finish: the teacher's x0 clipping, applied to the guided x0 as diffusers does (TeacherSchedule.finish).
    target: the UNet that makes the bootstrap targets (the EMA: a target network), else the student itself;
    order 2: Heun's teacher step (two guided teacher calls)."""
    with autocast(eps.device, dtype):
        student, guided = student_fn(model, schedule, prediction, w), boot.guided(teacher, scale=w, null_cond=null_cond)
        guided = guided if finish is None else finish(guided)
        target_student = None if target is None else student_fn(target, schedule, prediction, w)
        return boot.boot_loss(student, guided, eps, schedule=schedule, grid=grid, cond=cond, k=k,
                              config=boot.BootConfig(order=order), target_student=target_student)


# ----------------------------------------------------------------------------------------------------
# Images and output folders.


@torch.no_grad()
def decode(vae, latents) -> np.ndarray:
    """uint8 images (B, H, W, 3) from latents, with the teacher's AutoencoderKL or an AutoencoderTiny."""
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_for_diffusers(folder: Path, g: boot.TeacherStudent):
    """Next to the UNet in folder: the BootOneStepScheduler config that turns its prediction into the image
    at the student's own alpha_T, sigma_T (the very floats boot.TeacherStudent uses)."""
    from boot_diffusers import BootOneStepScheduler
    BootOneStepScheduler(prediction_type=g.prediction, alpha_T=g.alpha_a, sigma_T=g.sigma_a).save_pretrained(folder)


def diffusers_snippet(teacher: str, student: str, w: float, resolution: int) -> str:
    """Python that draws images with the student through StableDiffusionPipeline (README and model card)."""
    return f'''import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from boot_diffusers import BootOneStepScheduler  # one small file of the boot repository

student = "{student}"  # the run's student folder, or its hub id
pipe = StableDiffusionPipeline.from_pretrained(
    "{teacher}", unet=UNet2DConditionModel.from_pretrained(student),
    scheduler=BootOneStepScheduler.from_pretrained(student))
# On a GPU: torch_dtype=torch.float16 in both from_pretrained calls, then pipe.to("cuda").
images = pipe(["a lighthouse on a cliff at dawn"], guidance_scale={w}, num_inference_steps=1,
              height={resolution}, width={resolution}, generator=torch.Generator().manual_seed(0)).images
'''


def model_card(meta: dict, student: str, g: boot.TeacherStudent) -> str:
    """student/README.md: a Hugging Face model card (YAML header, then what the student is and how to use it)."""
    teacher, w, rng, n = meta["teacher"], meta["guidance_scale"], meta["guidance_range"], meta["bootstrap_steps"]
    base = "" if Path(teacher).is_dir() else f"base_model: {teacher}\n"  # the hub wants an id, not a local folder
    guidance = f"any w in [{rng[0]}, {rng[1]}] (the snippet uses {w})" if rng else f"w = {w} only (guidance_scale={w})"
    training = (f"{meta['steps']} steps, batch {meta['batch_size']} per process, AdamW lr {meta['lr']} "
                f"({meta.get('lr_schedule', 'constant')}), {meta['dtype']}, "
                f"EMA {meta['ema'] or 'none'}, seed {meta['seed']}")
    val = meta.get("validation")
    sampler = f"{'DDIM' if meta.get('order', 1) == 1 else 'Heun'}-{n} on the {meta.get('spacing', 't')} grid"  # its fixed point
    figures = (f"latent RMSE of the student's one call to the teacher's {sampler}: {val['rmse_to_teacher']:.4g} "
               f"(the teacher's latents: RMS {val['teacher_rms']:.4g}), {val['prompts']} prompts at w = {w}, "
               f"step {val['step']}; picture `validation/step-{val['step']:08d}.png` of the run (teacher above, "
               "student below)") if val else "none measured"
    judged = meta.get("judged")
    if judged:  # a digit teacher's judge: the student against the teacher's DDIM-k of most steps
        last = lambda row: max(row["teacher_ddim"], key=int)
        scores = "; ".join(f"w = {w}: {r['student']['accuracy']:.3f} and {r['student']['fd']:.1f} (teacher "
                           f"DDIM-{last(r)}: {r['teacher_ddim'][last(r)]['accuracy']:.3f} and "
                           f"{r['teacher_ddim'][last(r)]['fd']:.1f})" for w, r in judged["guidance"].items())
        judged = (f"| judged | prompted-digit accuracy and FD to held-out digits, {judged['samples']} samples, "
                  f"step {judged['step']}: {scores}; pictures in `figures/` of the run |\n")
    return f"""---
library_name: diffusers
{base}tags:
- boot
- distillation
- one-step
- text-to-image
- stable-diffusion
pipeline_tag: text-to-image
---

# One-step BOOT student of {Path(teacher).name}

A UNet distilled from `{teacher}` with BOOT (Gu et al., "BOOT: Data-free Distillation of Denoising Diffusion
Models with Bootstrapping", arXiv 2306.05544) by boot's `train_sd.py`, from prompts alone (no images). It draws
an image in one UNet call.

| | |
|---|---|
| teacher | `{teacher}`, {g.prediction} prediction |
| guidance scale | {guidance} |
| training | {training} |
| grid | {n} steps: the student's fixed point is the teacher's {sampler} (trailing timesteps) |
| resolution | {meta['resolution']} x {meta['resolution']} pixels |
| validation | {figures} |
{judged or ""}
## Use

With diffusers and `boot_diffusers.py` (one small file of the boot repository):

```python
{diffusers_snippet(teacher, student, w, meta['resolution'])}```

Or `python train_sd.py --sample RUN --prompts FILE` in the boot repository (the same images from the same noise).

## Conventions (what BootOneStepScheduler encodes)

- The pipeline's latents are the noise eps itself (standard normal, `init_noise_sigma = 1`).
- The UNet reads eps at timestep -1: the student's time t = 0, where the teacher's timestep i is t = (i + 1) / n.
- Its {g.prediction} prediction becomes the image latents at the FIXED coefficients of t = T, in float32:
  `y = to_x0(pred, x_t = eps, alpha_T = {g.alpha_a!r}, sigma_T = {g.sigma_a!r})`.
- Guidance: the UNet's guidance input (`time_cond_proj_dim`) reads StableDiffusionPipeline's embedding of w - 1;
  the pipeline then runs no classifier-free guidance of its own and calls the UNet once.
- The latents decode with the teacher's VAE, or an AutoencoderTiny (`madebyollin/taesd` for SD 1.x and 2.x).
"""


# ----------------------------------------------------------------------------------------------------
# Judged figures: for a digit teacher (teachers.py --kind text) whose folder holds judge/, a digit classifier.


def first_prompt_without_a_digit(prompts: Prompts):
    """The index of the first prompt that names no single digit (teachers.prompt_digit), or None; read in chunks."""
    import teachers
    for start in range(0, len(prompts), 4096):
        for i, text in enumerate(prompts.read(range(start, min(start + 4096, len(prompts)))), start):
            if teachers.prompt_digit(text) is None:
                return i
    return None


def find_judge(args, prompts: Prompts, teacher: str, d, *, required: str = None):
    """The judge of the judged evaluation, or None: --judge FOLDER, else the teacher folder's judge/ where it has one
    and every prompt names one digit. An explicit --judge (or `required`, the --evaluate flag that needs one) fails
    in one line where a prompt names no digit; the teacher's own judge is then skipped with a note."""
    import metrics
    if args.judge == "none":
        if required:
            raise UsageError(f"{required}: --judge none leaves nothing to evaluate")
        return None
    folder = Path(args.judge) if args.judge else Path(teacher) / "judge"
    explicit = args.judge is not None or required is not None
    if args.judge is None and not (folder / "config.json").is_file():  # no digit teacher (or a hub id): no judge
        if required:
            raise UsageError(f"{required}: its teacher {teacher} has no judge/; pass --judge FOLDER")
        return None
    flag = f"--judge {folder}" if args.judge else required or f"{folder}"
    missing = first_prompt_without_a_digit(prompts)
    if missing is not None:
        problem = (f"prompt {prompts.read([missing])[0]!r} (line {prompts.lines[missing]} of --prompts) names no "
                   "single digit")
        if explicit:
            raise UsageError(f"{flag}: the judge scores digits, and {problem}")
        d.say(f"no judged evaluation: {problem} ({folder} judges digits)")
        return None
    judge, mean, cov = loaded(flag, lambda: metrics.load_judge(folder, d.device))
    return SimpleNamespace(folder=folder.resolve(), judge=judge, reference=(mean, cov), flag=flag, explicit=explicit)


def judge_fits(judging, resolution: int, d):
    """judging where its judge reads images of this resolution; else a one-line error (explicit) or None, noted."""
    if judging is None or judging.judge.config["size"] == resolution:
        return judging
    problem = f"it reads {judging.judge.config['size']}-pixel images, this run draws {resolution}"
    if judging.explicit:
        raise UsageError(f"{judging.flag}: {problem}")
    d.say(f"no judged evaluation: {judging.flag}: {problem}")
    return None


def judged_ws(w: float, guidance_range) -> list:
    """The w a student is judged at: its one w, or teachers.FIGURE_WS (1, 2, 3, 5) each clamped into its range."""
    import teachers
    if guidance_range is None:
        return [float(w)]
    lo, hi = guidance_range
    return sorted({min(max(float(v), lo), hi) for v in teachers.FIGURE_WS})


def digit_picture(rows: list, digits: torch.Tensor) -> np.ndarray:
    """uint8 (len(rows) H, 10 W): in each row of gray images (B, 1, H, W), the first sample of each digit 0 ... 9
    (mid-gray where no prompt names it)."""
    height, width = rows[0].shape[-2:]
    picture = np.full((len(rows) * height, 10 * width), 128, dtype=np.uint8)
    for r, images in enumerate(rows):
        pixels = ((images[:, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        for digit in range(10):
            named = (digits == digit).nonzero()
            if len(named):
                picture[r * height:(r + 1) * height, digit * width:(digit + 1) * width] = pixels[named[0, 0]]
    return picture


@torch.no_grad()
def judge_student(sd, student, judging, prompts: Prompts, *, ws, shape, samples: int, dtype: str, device,
                  out: Path) -> dict:
    """For each w: the student's one call and the teacher's guided DDIM-k (k in teachers.FIGURE_KS), from the same
    noise (seed JUDGE_SEED) and prompts (--prompts in turn), decoded to gray (teachers.decode), scored by the judge
    in float32 (prompted-digit accuracy, FD to the held-out digits); the networks run under the autocast of dtype
    (--dtype's name). With the teacher's prompts.txt, as many samples and fp32, the teacher's figures are its
    figures.json's. Writes out/figures/judged-w{w}.png: rows teacher DDIM-1, 4, 16, 50 and the student, a column
    per digit."""
    import metrics
    import teachers
    schedule, prediction = sd.teacher.schedule, sd.teacher.prediction
    texts = prompts.read([i % len(prompts) for i in range(samples)])
    digits = torch.tensor([teachers.prompt_digit(t) for t in texts])
    encode = PromptEncoder(sd, device, warn=False)
    cond, null = encode(texts), encode([""])
    eps = torch.randn(samples, *shape, generator=torch.Generator().manual_seed(JUDGE_SEED)).to(device)
    judge, reference = judging.judge, judging.reference

    def draw(sampler):  # latents of every sample, JUDGE_BATCH at a time, the networks under autocast
        with autocast(device, DTYPES[dtype]):
            return torch.cat([sampler(e, c) for e, c in zip(eps.split(JUDGE_BATCH), cond.split(JUDGE_BATCH))])

    def score(latents):  # gray images and their figures; the VAE in its dtype, the judge in float32
        x = teachers.decode(sd.vae, latents.to(sd.vae.dtype)).float()
        return x, metrics.judge_prompted(judge, x, digits, *reference)

    net = teacher_fn(sd.unet, schedule, prediction)
    result = {"judge": str(judging.folder), "samples": samples, "seed": JUDGE_SEED, "dtype": dtype,
              "prompts": f"{prompts.path}, in turn", "guidance": {}}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    ks = teachers.FIGURE_KS
    with tqdm(total=len(ws) * (1 + sum(ks)), desc="judge", unit="call", dynamic_ncols=True) as bar:
        for w in ws:
            name, row = f"{w:g}", {}
            bar.set_postfix_str(f"w {w:g}, student")
            g = lambda e, c: boot.sample_student(student_fn(student, schedule, prediction,
                                                            torch.full((len(e),), w, device=device)), e, c)
            mine, row["student"] = score(draw(g))
            bar.update(1)
            guided, rows, row["teacher_ddim"] = sd.teacher.finish(boot.guided(net, scale=w, null_cond=null)), [], {}
            for k in ks:
                bar.set_postfix_str(f"w {w:g}, teacher DDIM-{k}")
                x, row["teacher_ddim"][str(k)] = score(draw(lambda e, c: boot.ddim_sample(
                    guided, e, schedule=schedule, steps=k, cond=c)))
                rows += [x] if k in PICTURE_KS else []
                bar.update(k)
            row["picture"] = f"figures/judged-w{name}.png"
            Image.fromarray(digit_picture(rows + [mine], digits)).save(out / row["picture"])
            result["guidance"][name] = row
    return result


def judged_table(judged: dict) -> str:
    """The judged figures as a short table: accuracy and FD per w, the student and the teacher's DDIM-k."""
    some = next(iter(judged["guidance"].values()))
    columns = ["student"] + [f"DDIM-{k}" for k in some["teacher_ddim"]]
    lines = [f"judged: prompted-digit accuracy, FD to the held-out digits ({judged['samples']} samples, "
             f"{judged['dtype']})", "w    " + "".join(f"{c:>15}" for c in columns)]
    for w, row in judged["guidance"].items():
        cells = [row["student"]] + list(row["teacher_ddim"].values())
        lines.append(f"{w:<5}" + "".join(f"{c['accuracy']:>8.3f}{c['fd']:>7.1f}" for c in cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Training and sampling.


def train(args, prompts):
    out = Path(args.out or "runs/sd")
    runtime.check_out(out, allowed=args.resume or args.overwrite,
              hint="pass --resume to continue the run there, or --overwrite to replace it")
    if args.ema is not None and args.ema >= 1:
        raise UsageError(f"--ema {args.ema}: the decay must be below 1 (e.g. 0.999)")
    if args.dtype == "fp16":  # runtime.Trainer has no loss scaling: fp16 gradients would underflow unseen
        raise UsageError("--dtype fp16 trains without loss scaling here; train in bf16 or fp32 "
                         "(fp16 is fine for --sample)")
    w_val = args.guidance_scale  # the w of the validation pictures, and sampling's default
    if w_val is None:
        w_val = sum(args.guidance_range) / 2 if args.guidance_range else 7.5
    lo, hi = args.guidance_range or (w_val, w_val)
    if not lo <= w_val <= hi:
        raise UsageError(f"--guidance-scale {w_val} is outside --guidance-range {lo},{hi}")
    val_prompts = prompts
    if args.validation_prompts:
        val_prompts = read_prompts(args.validation_prompts, "--validation-prompts")
        if len(val_prompts) > MAX_VALIDATION_IMAGES:
            raise UsageError(f"--validation-prompts {args.validation_prompts}: {len(val_prompts)} prompts; "
                             f"the validation picture takes at most {MAX_VALIDATION_IMAGES}")
    d = runtime.setup(args.device)
    args.dtype = resolved_dtype(args.dtype, d.device)
    dtype, teacher_name = DTYPES[args.dtype], args.teacher or DEFAULT_TEACHER
    if Path(teacher_name).is_dir():  # recorded for sampling and resuming, wherever they run from
        teacher_name = str(Path(teacher_name).resolve())
    judging = find_judge(args, prompts, teacher_name, d)  # before the teacher loads: a bad --judge fails at once
    sd = load_teacher(teacher_name, dtype, d.device)
    schedule, prediction = sd.teacher.schedule, sd.teacher.prediction
    try:
        grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
    except ValueError as e:
        raise UsageError(f"--bootstrap-steps {args.bootstrap_steps}: {e}") from None
    resolution = args.resolution or sd.unet.config.sample_size * vae_scale(sd.vae)  # the teacher's own, as diffusers'
    shape = latent_shape(sd.vae, sd.unet, resolution)
    judging = judge_fits(judging, resolution, d)
    encode = PromptEncoder(sd, d.device, warn=d.main)
    null = encode([""])  # the null branch of guidance: the empty prompt
    if args.overwrite and d.main:
        runtime.clear(out, RUN_OUTPUTS)

    student = make_student(teacher_name).to(d.device)
    lr = args.lr or (LR_LARGE if sum(p.numel() for p in student.parameters()) >= LARGE_UNET else LR_SMALL)
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    model = student
    if d.world > 1:
        device_ids = [d.device.index] if d.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(student, device_ids=device_ids)
    ema = None
    if args.ema:
        average = torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        ema = torch.optim.swa_utils.AveragedModel(student, multi_avg_fn=average).eval()  # never trained itself
    config = dict(teacher=teacher_name, resolution=resolution, guidance_range=args.guidance_range, ema=args.ema,
                  bootstrap_steps=args.bootstrap_steps, spacing=args.spacing, order=args.order,
                  batch_size=args.batch_size, lr=lr, lr_schedule=args.lr_schedule, seed=args.seed, dtype=args.dtype,
                  prediction=prediction)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    trainer = runtime.Trainer(out=out, model=model, optimizer=optimizer, lr_schedule=lr_schedule(optimizer, args),
                              ema=ema, dist_info=d, config=config, ckpt_every=args.ckpt_every, clip=args.clip)
    if args.resume and not trainer.resume(same_keys=("teacher", "resolution", "guidance_range", "ema")):
        d.say(f"--resume: no checkpoint in {out} yet; starting from the teacher")
    teacher = teacher_fn(sd.unet, schedule, prediction)

    def exported():  # the student that validation shows and the run hands over
        return ema.module if ema is not None else trainer.student

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, d.rank, step, d.device)  # all of a step's randomness: exact resume
        b, device = args.batch_size, d.device
        eps = torch.randn(b, *shape, generator=gen, device=device)
        which = torch.randint(len(prompts), (b,), generator=gen, device=device)
        k = torch.randint(1, len(grid), (b,), generator=gen, device=device)
        w = lo + (hi - lo) * torch.rand(b, generator=gen, device=device)
        cond = encode(prompts.read(which.tolist()))  # this rank's own batch, nothing else
        return boot_sd_loss(model, teacher, eps=eps, cond=cond, w=w, k=k, schedule=schedule, grid=grid,
                            prediction=prediction, null_cond=null, dtype=dtype, finish=sd.teacher.finish,
                            target=None if ema is None else ema.module, order=args.order)

    # Validation (rank 0): the student (one call) below its fixed point, the teacher's N steps down the run's grid with
    # the run's step (DDIM-N on the uniform grid), on fixed prompts and noise.
    figures = {}  # of the latest validation: what boot_sd.json and the model card report
    if d.main:
        val_texts = val_prompts.read(range(len(val_prompts) if args.validation_prompts else
                                           min(len(prompts), VALIDATION_IMAGES)))
        val_eps = torch.randn(len(val_texts), *shape, generator=torch.Generator(d.device).manual_seed(args.seed),
                              device=d.device)
        val_cond, val_w = encode(val_texts), torch.full((len(val_texts),), w_val, device=d.device)
    reference = []  # the teacher's latents and row of images, drawn once

    def validate(step):
        if not d.main:
            return
        with autocast(d.device, dtype), evaluating(exported()) as model_now:
            if not reference:
                guided = sd.teacher.finish(boot.guided(teacher, scale=val_w, null_cond=null))
                ddim = boot.fixed_point(guided, val_eps, schedule=schedule, grid=grid, cond=val_cond, order=args.order)[0]
                reference.extend([ddim.float(), decode(sd.vae, ddim)])
            mine = boot.sample_student(student_fn(model_now, schedule, prediction, val_w), val_eps, val_cond)
        rms = lambda x: x.pow(2).mean().sqrt().item()
        figures.update(step=step, prompts=len(val_texts), rmse_to_teacher=rms(mine - reference[0]),
                       teacher_rms=rms(reference[0]))
        (out / "validation").mkdir(exist_ok=True)
        with open(out / "validation" / "log.jsonl", "a") as f:
            f.write(json.dumps(figures) + "\n")
        grid_image = np.concatenate([np.concatenate(list(row), axis=1) for row in (reference[1], decode(sd.vae, mine))])
        Image.fromarray(grid_image).save(out / "validation" / f"step-{step:08d}.png")

    trainer.fit(args.steps, loss_fn, desc="boot-sd", every=(args.validate_every, validate))
    if d.main:
        if figures.get("step") != trainer.step:  # every run ends with a picture of its final student
            validate(trainer.step)
        g = student_fn(exported(), schedule, prediction)
        exported().save_pretrained(out / "student")  # diffusers format, safetensors
        save_for_diffusers(out / "student", g)
        meta = {**config, "guidance_scale": w_val, "steps": trainer.step, "validation": figures}
        write_run(out, meta, g)  # the run is complete before the judged evaluation: --evaluate redoes that alone
        d.say(f"student in {out / 'student'}; draw images with: python train_sd.py --sample {out} --prompts FILE, "
              f"or with diffusers' StableDiffusionPipeline ({out / 'student' / 'README.md'})")
        if judging is not None:
            with evaluating(exported()) as model_now:
                meta["judged"] = {"step": trainer.step, **judge_student(
                    sd, model_now, judging, prompts, ws=judged_ws(w_val, args.guidance_range), shape=shape,
                    samples=args.eval_samples or EVAL_SAMPLES.get(d.device.type, 100), dtype=args.dtype,
                    device=d.device, out=out)}
            write_run(out, meta, g)
            d.say(judged_table(meta["judged"]) + f"\n(in {out / 'boot_sd.json'}, pictures in {out / 'figures'})")


def sample(args, prompts):
    """One image per prompt, in prompt order, named for its index and its line in the prompts file
    (00000-line00001.png): one student UNet call per batch, plus --teacher-steps J guided teacher steps
    (boot.sample_any_t: the student to the grid time t_J, then J teacher steps of the run's order on its grid)."""
    run = Path(args.sample)
    meta = read_run(run, "--sample")
    out = Path(args.out or run / "samples")
    runtime.check_out(out, allowed=args.overwrite, hint="pass --overwrite to replace its images")
    w = meta["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    if meta["guidance_range"] is None and w != meta["guidance_scale"]:
        raise UsageError(f"--guidance-scale {w}: this student was trained at w = {meta['guidance_scale']} only; "
                         "train with --guidance-range to choose w when sampling")
    if meta["guidance_range"] is not None and not meta["guidance_range"][0] <= w <= meta["guidance_range"][1]:
        lo, hi = meta["guidance_range"]
        raise UsageError(f"--guidance-scale {w} is outside the range this student was trained on, {lo},{hi}")
    if not 0 <= args.teacher_steps < meta["bootstrap_steps"]:
        raise UsageError(f"--teacher-steps {args.teacher_steps}: must be in [0, {meta['bootstrap_steps'] - 1}], "
                         f"below the run's --bootstrap-steps")
    d = runtime.setup(args.device)
    args.dtype = resolved_dtype(args.dtype, d.device)
    dtype, teacher_name = DTYPES[args.dtype], args.teacher or meta["teacher"]
    sd = load_teacher(teacher_name, dtype, d.device, unet=args.teacher_steps > 0)
    from diffusers import AutoencoderTiny
    student = load_student(run, "--sample", d.device)
    decoder = sd.vae
    if args.tiny_vae:  # the full SD decoder costs four times the student's call (BOOT.md section 7)
        load = AutoencoderTiny.from_pretrained
        decoder = loaded(f"--tiny-vae {args.tiny_vae}", lambda: load(args.tiny_vae, torch_dtype=dtype, use_safetensors=True)).to(d.device)
    schedule = sd.teacher.schedule
    grid = boot.time_grid(schedule, meta["bootstrap_steps"], spacing=meta.get("spacing", "t")).to(d.device)
    shape = latent_shape(sd.vae, student, meta["resolution"])
    encode = PromptEncoder(sd, d.device, warn=True)
    null = encode([""]) if args.teacher_steps else None  # the null branch of the teacher's guidance
    if args.overwrite:
        runtime.clear(out, ("*.png",))
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(d.device).manual_seed(args.seed)
    for start in range(0, len(prompts), args.batch_size):
        batch = range(start, min(start + args.batch_size, len(prompts)))
        cond = encode(prompts.read(batch))
        eps = torch.randn(len(batch), *shape, generator=gen, device=d.device)
        with autocast(d.device, dtype):  # the conversion to the image stays in fp32 (student_fn)
            w_batch = torch.full((len(batch),), w, device=d.device)
            g = student_fn(student, schedule, meta["prediction"], w_batch)
            if args.teacher_steps:
                guided = sd.teacher.finish(boot.guided(teacher_fn(sd.unet, schedule, meta["prediction"]), scale=w_batch,
                                                       null_cond=null))
                latents = boot.sample_any_t(g, guided, eps, schedule=schedule, grid=grid, j=args.teacher_steps, cond=cond,
                                            order=meta.get("order", 1))
            else:
                latents = boot.sample_student(g, eps, cond)
        for i, image in zip(batch, decode(decoder, latents)):
            Image.fromarray(image).save(out / f"{i:05d}-line{prompts.lines[i]:05d}.png")
    teacher_calls = meta.get("order", 1) * args.teacher_steps  # Heun: two guided calls a step
    calls = f"1 student + {teacher_calls} guided teacher calls" if args.teacher_steps else "one UNet call"
    d.say(f"{len(prompts)} images at w = {w} in {out}, {calls} each")


def evaluate(args, prompts):
    """--evaluate RUN: the judged figures of a finished run's student, as training ends with them, into
    RUN/boot_sd.json ("judged", replaced) and RUN/figures/; the model card reports them."""
    run = Path(args.evaluate)
    meta = read_run(run, "--evaluate")
    d = runtime.setup(args.device)
    args.dtype = resolved_dtype(args.dtype, d.device)
    teacher_name = args.teacher or meta["teacher"]
    judging = find_judge(args, prompts, teacher_name, d, required=f"--evaluate {run}")
    sd = load_teacher(teacher_name, DTYPES[args.dtype], d.device)
    student = load_student(run, "--evaluate", d.device)
    shape = latent_shape(sd.vae, student, meta["resolution"])
    judging = judge_fits(judging, meta["resolution"], d)
    meta["judged"] = {"step": meta["steps"], **judge_student(
        sd, student, judging, prompts, ws=judged_ws(meta["guidance_scale"], meta["guidance_range"]), shape=shape,
        samples=args.eval_samples or EVAL_SAMPLES.get(d.device.type, 100), dtype=args.dtype, device=d.device, out=run)}
    write_run(run, meta, student_fn(student, sd.teacher.schedule, meta["prediction"]))
    d.say(judged_table(meta["judged"]) + f"\n(in {run / 'boot_sd.json'}, pictures in {run / 'figures'})")


def read_run(run: Path, flag: str) -> dict:
    """The boot_sd.json of a finished run, or one line saying it is none."""
    try:
        return json.loads((run / "boot_sd.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{flag} {run}: no readable boot_sd.json; "
                         "expected the --out folder of a finished train_sd.py run") from None


def load_student(run: Path, flag: str, device):
    """The run's student UNet in float32 (--dtype is the autocast it runs under), in eval mode."""
    from diffusers import UNet2DConditionModel
    load = UNet2DConditionModel.from_pretrained
    return loaded(f"{flag} {run}: its student", lambda: load(run / "student", torch_dtype=torch.float32,
                                                             use_safetensors=True)).to(device).eval()


def write_run(out: Path, meta: dict, g: boot.TeacherStudent):
    """boot_sd.json and the student's model card."""
    (out / "boot_sd.json").write_text(json.dumps(meta, indent=1))
    (out / "student" / "README.md").write_text(model_card(meta, str(out / "student"), g))


# ----------------------------------------------------------------------------------------------------
# Command line.


def guidance_scales(count: int):
    """An argparse type: `count` comma-separated guidance scales, finite, >= 0 and increasing."""
    def parse(text):
        try:
            w = [float(v) for v in text.split(",")]
        except ValueError:
            w = []
        if len(w) != count or not all(math.isfinite(v) and v >= 0 for v in w) or w != sorted(set(w)):
            raise argparse.ArgumentTypeError(
                f"expected {'W' if count == 1 else 'WMIN,WMAX with WMIN < WMAX'}, finite and >= 0; got {text!r}")
        return w[0] if count == 1 else tuple(w)
    parse.__name__ = "guidance scale"
    return parse


def parser():
    positive, p = runtime.positive, runtime.ArgumentParser(
        description="BOOT: distil Stable Diffusion into a one-call student from a prompts file alone.")
    p.add_argument("--prompts", required=True, help="text file, one prompt a line (UTF-8; blank and # lines skipped); "
                                                    "read as batches need it, so it may hold millions")
    p.add_argument("--teacher", help=f"diffusers Stable Diffusion, hub id or folder (default {DEFAULT_TEACHER}; "
                                     "with --sample or --evaluate, the run's)")
    p.add_argument("--out", help="output folder (default runs/sd; with --sample, RUN/samples)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="precision of the frozen teacher and of the student's autocast; the student's weights stay "
                        "fp32. auto: bf16 on CUDA, fp32 on the CPU (where bf16 is emulated: slower, and no more "
                        "accurate). fp16 only with --sample (training has no loss scaling)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--steps", type=positive(), default=10_000,
                   help="training steps in all (a resumed run counts its earlier ones)")
    p.add_argument("--batch-size", type=positive(), default=8,
                   help="examples per step and process (images per student call with --sample)")
    p.add_argument("--lr", type=positive(float), help=f"AdamW learning rate (default {LR_SMALL:g} for a UNet under "
                   f"{LARGE_UNET // 10**6} M parameters, as measured on teachers/mnist-t2i; {LR_LARGE:g} above, for "
                   "Stable Diffusion: not measured)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help=f"constant: --lr throughout; cosine: {WARMUP} steps of warm-up, then a cosine decay to 0 at "
                        "--steps (a resumed run with more --steps stretches it)")
    p.add_argument("--bootstrap-steps", type=positive(), default=16,
                   help="N of the time grid: the student's fixed point is the teacher's N steps down it (N <= its "
                        "timesteps)")
    p.add_argument("--guidance-scale", type=guidance_scales(1),
                   help="w of classifier-free guidance, diffusers' convention, 1 = none (default 7.5, or the middle "
                        "of --guidance-range, which it must lie in; with --sample, the run's, within its range)")
    p.add_argument("--guidance-range", type=guidance_scales(2), metavar="WMIN,WMAX",
                   help="draw w per example from this range and feed it to the student: one student for every w in it")
    p.add_argument("--resolution", type=positive(),
                   help="image size in pixels (default: the teacher's own, its UNet's sample_size times the VAE's "
                        "scale factor: 512 for SD 1.5, 768 for SD 2.x 768-v)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the student's activations in backward: less memory, slower")
    p.add_argument("--clip", type=positive(float), default=1.0, help="gradient norm clipping")
    p.add_argument("--ema", type=positive(float), help="EMA decay of the student's weights, e.g. 0.99: the EMA makes "
                   "the bootstrap targets (a target network, as consistency models) and is the student validated and written")
    p.add_argument("--order", type=int, choices=(1, 2), default=2, help="teacher step: 1 = DDIM, 2 = Heun (2 guided calls)")
    p.add_argument("--spacing", choices=boot.SPACINGS, default="quadratic",
                   help="time grid: uniform in t, t = (k/N)^2 (fine near the data), or uniform in lambda")
    p.add_argument("--validate-every", type=positive(), default=500,
                   help="write out/validation/step-N.png every this many steps, and at the end: the student's "
                        "fixed point (the teacher's N steps down the run's grid, with its step) above, student below")
    p.add_argument("--validation-prompts", metavar="FILE",
                   help=f"the prompts of the validation picture, up to {MAX_VALIDATION_IMAGES} "
                        f"(default: the first {VALIDATION_IMAGES} of --prompts)")
    p.add_argument("--ckpt-every", type=positive(), default=1000,
                   help="checkpoint every this many steps (and on SIGINT/SIGTERM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, prompts, times and w of every step")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    again.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    p.add_argument("--judge", metavar="FOLDER",
                   help="a digit teacher's judge (teachers.py's judge/): at the end of training (or with --evaluate), "
                        "the student's one call and the teacher's guided DDIM-k (k = 1 ... 50), from the same noise and "
                        "--prompts in turn, scored by the judge (prompted-digit accuracy, FD) per w into boot_sd.json, "
                        "and pictures into out/figures/. Every prompt must name one digit. Default: the teacher "
                        "folder's judge/ where it has one and every prompt names a digit; none turns it off")
    p.add_argument("--eval-samples", type=positive(), metavar="N",
                   help=f"samples of the judged evaluation (default {EVAL_SAMPLES['cuda']} on CUDA, "
                        f"{EVAL_SAMPLES['cpu']} on the CPU: about a minute on 2 cores for teachers/mnist-t2i; FD "
                        "compares only at equal N)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sample", metavar="RUN", help="sampling mode: one image per prompt from the student of RUN "
                                                      "(a training --out), one student call per batch; files "
                                                      "IIIII-lineLLLLL.png, L the prompt's line in --prompts")
    mode.add_argument("--evaluate", metavar="RUN",
                      help="judged evaluation of RUN's student (see --judge), at its w (a --guidance-range student at "
                           "1, 2, 3 and 5 clamped into its range); writes RUN/boot_sd.json and RUN/figures/")
    p.add_argument("--teacher-steps", type=int, default=0, metavar="J",
                   help="with --sample: one student call to the grid time t_J, then J teacher steps of the run's own "
                        "(DDIM, or Heun: 2 guided calls each; BOOT's any-t sampling: more calls, closer to the "
                        "teacher); 0 = one call")
    p.add_argument("--tiny-vae", metavar="ID_OR_DIR",
                   help="with --sample: decode with this AutoencoderTiny (e.g. madebyollin/taesd)")
    return p


@runtime.cli
def main(argv=None):
    args = parser().parse_args(argv)
    if (args.sample or args.evaluate) and args.validation_prompts:
        raise UsageError(f"--validation-prompts is a training option; {'--sample' if args.sample else '--evaluate'} "
                         "reads --prompts")
    if (args.tiny_vae or args.teacher_steps) and not args.sample:
        raise UsageError(f"{'--tiny-vae' if args.tiny_vae else '--teacher-steps'} is a sampling option; use it with --sample")
    if args.sample and (args.judge or args.eval_samples):
        raise UsageError(f"{'--judge' if args.judge else '--eval-samples'} is an option of training and --evaluate, "
                         "not of --sample")
    if args.evaluate and args.out:
        raise UsageError("--evaluate writes into RUN itself (boot_sd.json, figures/); it takes no --out")
    prompts = read_prompts(args.prompts)
    (sample if args.sample else evaluate if args.evaluate else train)(args, prompts)


if __name__ == "__main__":
    main()
