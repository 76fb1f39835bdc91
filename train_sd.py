"""train_sd.py: BOOT for Stable Diffusion from a prompts file alone, and one-call sampling with the student.

    python train_sd.py --prompts prompts.txt                        # SD 1.5 teacher, writes runs/sd
    python train_sd.py --prompts prompts.txt --guidance-range 2,8   # one student for every w in [2, 8]
    python train_sd.py --sample runs/sd --prompts mine.txt          # one UNet call per batch of images

boot.py is the algorithm, runtime.py the run (checkpoints, --resume, signals, non-finite steps, torchrun);
this file adapts diffusers to them. The student is a copy of the teacher's UNet that reads eps in place of
x_t and trains in the VAE's latent space (BOOT.md section 4). Conventions, stated here once:
- Time: boot.Schedule.discrete(alphas_cumprod), t = (i + 1) / n is the teacher's timestep i, t = 0 the
  clean latent. The student reads the timestep t n - 1 unrounded (-1 at t = 0; Schedule.network_time).
- Student output (boot.TeacherStudent): y = to_x0(unet(eps, t n - 1, c), x_t = eps) with the teacher's
  prediction type at the FIXED alpha_T, sigma_T of t = T. Starting as the teacher, g(eps, T, c) = f(eps, T, c).
- Guidance: diffusers' w (w = 1 is the conditional teacher). With --guidance-range every example draws its
  own w, which guides its teacher target and enters the student as LCM's guidance embedding of w itself
  (time_cond_proj_dim = 256, projection zero-initialised: the student starts as the teacher for every w).
diffusers and transformers are imported where they are used: they take seconds, and bad input should not.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

import numpy as np
import torch
from PIL import Image

import boot
import runtime
from runtime import UsageError

DEFAULT_TEACHER = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GUIDANCE_DIM = 256  # width of the student's guidance embedding, as in LCM
RUN_OUTPUTS = ("checkpoints", "validation", "student", "boot_sd.json", "log.jsonl")  # what --overwrite clears
VALIDATION_IMAGES = 4


# ----------------------------------------------------------------------------------------------------
# Input: prompts and the teacher.


def read_prompts(path) -> list:
    """One prompt a line, UTF-8 (a byte-order mark is fine); blank lines and # lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--prompts {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompts {path}: not UTF-8 text (byte {e.start} is {e.object[e.start]:#x})") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise UsageError(f"--prompts {path}: cannot be read ({e.strerror or e})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UsageError(f"--prompts {path}: " + ("the file is empty" if not text.strip()
                                                  else "no prompt in it, only blank or # lines"))
    return prompts


def loaded(what: str, load):
    """load(), or one line saying what did not load and why."""
    try:
        return load()
    except Exception as e:  # whatever the reason (missing file, bad config, offline hub), the input is unusable
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{what} does not load ({reason})") from None


def load_teacher(name: str, dtype, device, *, unet: bool = True):
    """The frozen parts of a diffusers Stable Diffusion (hub id or folder), the UNet only if asked for; the
    scheduler gives the schedule (DDPMScheduler reads any SD scheduler config) and the prediction type."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging
    # No "Loading weights" bar per model (noise before a one-line error); the hub's download bars stay.
    transformers_logging.set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    classes = dict(scheduler=DDPMScheduler, tokenizer=CLIPTokenizer, text_encoder=CLIPTextModel, vae=AutoencoderKL)
    if unet:
        classes["unet"] = UNet2DConditionModel
    sd = SimpleNamespace()
    for part, cls in classes.items():
        # Weights from safetensors only: a pickled .bin can run arbitrary code.
        kwargs = {} if part in ("scheduler", "tokenizer") else {"torch_dtype": dtype, "use_safetensors": True}
        value = loaded(f"--teacher {name}: its {part}", lambda: cls.from_pretrained(name, subfolder=part, **kwargs))
        if isinstance(value, torch.nn.Module):
            value = value.to(device).eval().requires_grad_(False)
        setattr(sd, part, value)
    # transformers builds an empty tokenizer, rather than failing, where the tokenizer's files are missing.
    tok = sd.tokenizer
    if len(tok) <= len(tok.all_special_tokens) or tok.model_max_length > sd.text_encoder.config.max_position_embeddings:
        raise UsageError(f"--teacher {name}: its tokenizer does not load (no vocabulary, or longer than the encoder)")
    return sd


def latent_shape(vae, unet, resolution: int) -> tuple:
    """(channels, size, size) of the latents of a resolution x resolution image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)  # the UNet halves the latents per level
    if resolution % multiple:
        raise UsageError(f"--resolution {resolution} must be a multiple of {multiple} for this teacher")
    return unet.config.in_channels, resolution // factor, resolution // factor


@torch.no_grad()
def encode(sd, prompts: list, d: runtime.Dist, batch: int = 64):
    """(embeddings (P, L, D) kept on the CPU, the empty prompt's (1, L, D) on the device for the null branch)."""
    tok, length = sd.tokenizer, sd.tokenizer.model_max_length
    ids = tok(prompts, truncation=True, max_length=length + 1).input_ids  # one token more than fits: over-long
    over = [p for p, p_ids in zip(prompts, ids) if len(p_ids) > length]
    if over and d.main:
        print(f"warning: {len(over)} prompt(s) longer than the tokenizer's {length} tokens were truncated, "
              f"first: {over[0][:60]!r}", file=sys.stderr)
    texts, chunks = prompts + [""], []
    for i in range(0, len(texts), batch):
        ids = tok(texts[i:i + batch], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        chunks.append(sd.text_encoder(ids.input_ids.to(d.device)).last_hidden_state.cpu())
    embeddings = torch.cat(chunks)
    return embeddings[:-1], embeddings[-1:].to(d.device)


# ----------------------------------------------------------------------------------------------------
# Teacher and student as boot.py sees them.


def teacher_fn(unet, schedule: boot.Schedule, prediction: str) -> boot.Teacher:
    """f(x_t, t, c) -> x0: the teacher UNet in its own dtype; the result is in x_t's dtype (float32 in
    training), so the bootstrap target is computed in fp32."""
    def unet_call(x, timestep, cond):
        return unet(x.to(unet.dtype), timestep, encoder_hidden_states=cond.to(unet.dtype)).sample
    return boot.denoiser(unet_call, schedule, prediction=prediction)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's get_guidance_scale_embedding, applied to diffusers' w itself (LCM's pipeline embeds w - 1)."""
    from diffusers.models.embeddings import get_timestep_embedding
    return get_timestep_embedding(1000 * w, dim, flip_sin_to_cos=False, downscale_freq_shift=1)


def student_fn(model, schedule: boot.Schedule, prediction: str, w=None) -> boot.TeacherStudent:
    """g(eps, t, c): boot.TeacherStudent over the student UNet, to_x0(unet(eps, t n - 1, c, emb(w)), x_t = eps)
    at the fixed alpha_T, sigma_T. model: the UNet or its DistributedDataParallel wrapper; w (B,) is fed when
    the UNet has a guidance input (time_cond_proj_dim)."""
    unet = getattr(model, "module", model)
    dim = unet.config.time_cond_proj_dim
    w_emb = guidance_embedding(w, dim).to(unet.dtype) if dim and w is not None else None

    def net(x, time, cond):  # float32 out: the signal, and the bootstrap target made from it, are fp32
        out = model(x.to(unet.dtype), time, encoder_hidden_states=cond.to(unet.dtype), timestep_cond=w_emb)
        return out.sample.float()
    return boot.TeacherStudent(net, schedule, prediction=prediction)


def make_student(teacher: str, *, guidance: bool):
    """The teacher's UNet in float32 (the master weights); with guidance, plus a zero-initialised w input."""
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32, use_safetensors=True)
    if not guidance or unet.config.time_cond_proj_dim:  # a teacher with a guidance input keeps its own
        return unet
    student = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": GUIDANCE_DIM})
    for name in student.load_state_dict(unet.state_dict(), strict=False).missing_keys:  # time_embedding.cond_proj
        torch.nn.init.zeros_(student.get_parameter(name))
    return student


def autocast(device, dtype):
    """Mixed precision in dtype over float32 weights; none for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def boot_sd_loss(model, teacher, *, eps, cond, w, k, schedule, grid, prediction, null_cond, dtype):
    """One BOOT loss under autocast: each example's w guides its teacher target and enters the student."""
    with autocast(eps.device, dtype):
        student, guided = student_fn(model, schedule, prediction, w), boot.guided(teacher, scale=w, null_cond=null_cond)
        return boot.boot_loss(student, guided, eps, schedule=schedule, grid=grid, cond=cond, k=k)


# ----------------------------------------------------------------------------------------------------
# Images and output folders.


@torch.no_grad()
def decode(vae, latents) -> np.ndarray:
    """uint8 images (B, H, W, 3) from latents, with the teacher's AutoencoderKL or an AutoencoderTiny."""
    x = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------------
# Training and sampling.


def train(args, prompts):
    out = Path(args.out or "runs/sd")
    runtime.check_out(out, allowed=args.resume or args.overwrite,
              hint="pass --resume to continue the run there, or --overwrite to replace it")
    if args.ema is not None and args.ema >= 1:
        raise UsageError(f"--ema {args.ema}: the decay must be below 1 (e.g. 0.999)")
    w_val = args.guidance_scale  # the w of the validation pictures, and sampling's default
    if w_val is None:
        w_val = sum(args.guidance_range) / 2 if args.guidance_range else 7.5
    lo, hi = args.guidance_range or (w_val, w_val)
    if not lo <= w_val <= hi:
        raise UsageError(f"--guidance-scale {w_val} is outside --guidance-range {lo},{hi}")
    d = runtime.setup(args.device)
    dtype, teacher_name = DTYPES[args.dtype], args.teacher or DEFAULT_TEACHER
    if Path(teacher_name).is_dir():  # recorded for sampling and resuming, wherever they run from
        teacher_name = str(Path(teacher_name).resolve())
    sd = load_teacher(teacher_name, dtype, d.device)
    schedule, prediction = boot.Schedule.discrete(sd.scheduler.alphas_cumprod), sd.scheduler.config.prediction_type
    try:
        grid = boot.time_grid(schedule, args.bootstrap_steps)
    except ValueError as e:
        raise UsageError(f"--bootstrap-steps {args.bootstrap_steps}: {e}") from None
    shape = latent_shape(sd.vae, sd.unet, args.resolution)
    embeddings, null = encode(sd, prompts, d)
    if args.overwrite and d.main:
        runtime.clear(out, RUN_OUTPUTS)

    student = make_student(teacher_name, guidance=args.guidance_range is not None).to(d.device)
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    model = student
    if d.world > 1:
        device_ids = [d.device.index] if d.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(student, device_ids=device_ids)
    ema = None
    if args.ema:
        average = torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        ema = torch.optim.swa_utils.AveragedModel(student, multi_avg_fn=average)
    config = dict(teacher=teacher_name, resolution=args.resolution, guidance_range=args.guidance_range, ema=args.ema,
                  bootstrap_steps=args.bootstrap_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  dtype=args.dtype, prediction=prediction)
    trainer = runtime.Trainer(out=out, model=model, optimizer=torch.optim.AdamW(student.parameters(), lr=args.lr),
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
        cond = embeddings[which.cpu()].to(device)
        return boot_sd_loss(model, teacher, eps=eps, cond=cond, w=w, k=k, schedule=schedule, grid=grid,
                            prediction=prediction, null_cond=null, dtype=dtype)

    # Validation: the student (one call) below the teacher's DDIM-N, on fixed prompts and noise.
    n_val = min(VALIDATION_IMAGES, len(prompts))
    val_eps = torch.randn(n_val, *shape, generator=torch.Generator(d.device).manual_seed(args.seed), device=d.device)
    val_cond, val_w = embeddings[:n_val].to(d.device), torch.full((n_val,), w_val, device=d.device)
    reference = []  # the teacher's row, drawn once

    def validate(step):
        if not d.main:
            return
        with autocast(d.device, dtype):
            if not reference:
                guided = boot.guided(teacher, scale=val_w, null_cond=null)
                ddim = boot.ddim_sample(guided, val_eps, schedule=schedule, steps=args.bootstrap_steps, cond=val_cond)
                reference.append(decode(sd.vae, ddim))
            g = student_fn(exported(), schedule, prediction, val_w)
            mine = decode(sd.vae, boot.sample_student(g, val_eps, val_cond))
        (out / "validation").mkdir(exist_ok=True)
        grid_image = np.concatenate([np.concatenate(list(row), axis=1) for row in (reference[0], mine)], axis=0)
        Image.fromarray(grid_image).save(out / "validation" / f"step-{step:08d}.png")

    trainer.fit(args.steps, loss_fn, desc="boot-sd", every=(args.validate_every, validate))
    if d.main:
        exported().save_pretrained(out / "student")  # diffusers format, safetensors
        meta = {**config, "guidance_scale": w_val, "steps": trainer.step}
        (out / "boot_sd.json").write_text(json.dumps(meta, indent=1))
        d.say(f"student in {out / 'student'}; draw images with: python train_sd.py --sample {out} --prompts FILE")


def sample(args, prompts):
    """One image per prompt, out/00000.png on, in prompt order: one student UNet call per batch."""
    run = Path(args.sample)
    try:
        meta = json.loads((run / "boot_sd.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"--sample {run}: no readable boot_sd.json; "
                         "expected the --out folder of a finished train_sd.py run") from None
    out = Path(args.out or run / "samples")
    runtime.check_out(out, allowed=args.overwrite, hint="pass --overwrite to replace its images")
    w = meta["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    if meta["guidance_range"] is None and w != meta["guidance_scale"]:
        raise UsageError(f"--guidance-scale {w}: this student was trained at w = {meta['guidance_scale']} only; "
                         "train with --guidance-range to choose w when sampling")
    d = runtime.setup(args.device)
    dtype, teacher_name = DTYPES[args.dtype], args.teacher or meta["teacher"]
    sd = load_teacher(teacher_name, dtype, d.device, unet=False)
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    load = UNet2DConditionModel.from_pretrained
    student = loaded(f"--sample {run}: its student", lambda: load(run / "student", torch_dtype=dtype, use_safetensors=True)).to(d.device)
    decoder = sd.vae
    if args.tiny_vae:  # the full SD decoder costs four times the student's call (BOOT.md section 7)
        load = AutoencoderTiny.from_pretrained
        decoder = loaded(f"--tiny-vae {args.tiny_vae}", lambda: load(args.tiny_vae, torch_dtype=dtype, use_safetensors=True)).to(d.device)
    schedule = boot.Schedule.discrete(sd.scheduler.alphas_cumprod)
    shape = latent_shape(sd.vae, student, meta["resolution"])
    embeddings, _ = encode(sd, prompts, d)
    if args.overwrite:
        runtime.clear(out, ("*.png",))
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(d.device).manual_seed(args.seed)
    for i in range(0, len(prompts), args.batch_size):
        cond = embeddings[i:i + args.batch_size].to(d.device)
        eps = torch.randn(len(cond), *shape, generator=gen, device=d.device)
        g = student_fn(student, schedule, meta["prediction"], torch.full((len(cond),), w, device=d.device))
        for j, image in enumerate(decode(decoder, boot.sample_student(g, eps, cond)), start=i):
            Image.fromarray(image).save(out / f"{j:05d}.png")
    d.say(f"{len(prompts)} images at w = {w} in {out}")


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
    p.add_argument("--prompts", required=True, help="text file, one prompt a line (UTF-8; blank and # lines skipped)")
    p.add_argument("--teacher", help=f"diffusers Stable Diffusion, hub id or folder (default {DEFAULT_TEACHER}; "
                                     "with --sample, the run's teacher)")
    p.add_argument("--out", help="output folder (default runs/sd; with --sample, RUN/samples)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16",
                   help="precision of the frozen teacher and of the student's autocast; the student's master weights "
                        "stay fp32 (fp16 has no loss scaling: prefer bf16)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--steps", type=positive(), default=10_000,
                   help="training steps in all (a resumed run counts its earlier ones)")
    p.add_argument("--batch-size", type=positive(), default=8,
                   help="examples per step and process (images per student call with --sample)")
    p.add_argument("--lr", type=positive(float), default=1e-5, help="AdamW learning rate")
    p.add_argument("--bootstrap-steps", type=positive(), default=64,
                   help="N of the time grid: the student's fixed point is the teacher's DDIM-N (N <= its timesteps)")
    p.add_argument("--guidance-scale", type=guidance_scales(1),
                   help="w of classifier-free guidance, diffusers' convention, 1 = none (default 7.5, or the middle "
                        "of --guidance-range, which it must lie in; with --sample, the run's)")
    p.add_argument("--guidance-range", type=guidance_scales(2), metavar="WMIN,WMAX",
                   help="draw w per example from this range and feed it to the student: one student for every w in it")
    p.add_argument("--resolution", type=positive(), default=512, help="image size in pixels (SD latents: 8 times less)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the student's activations in backward: less memory, slower")
    p.add_argument("--clip", type=positive(float), default=1.0, help="gradient norm clipping")
    p.add_argument("--ema", type=positive(float), help="EMA decay, e.g. 0.999; the student written is then the average")
    p.add_argument("--validate-every", type=positive(), default=500,
                   help="write out/validation/step-N.png every this many steps: teacher DDIM-N above, student below")
    p.add_argument("--ckpt-every", type=positive(), default=1000,
                   help="checkpoint every this many steps (and on SIGINT/SIGTERM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, prompts, times and w of every step")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    again.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    p.add_argument("--sample", metavar="RUN", help="sampling mode: one image per prompt from the student of RUN "
                                                   "(a training --out), one student call per batch")
    p.add_argument("--tiny-vae", metavar="ID_OR_DIR",
                   help="with --sample: decode with this AutoencoderTiny (e.g. madebyollin/taesd)")
    return p


@runtime.cli
def main(argv=None):
    args = parser().parse_args(argv)
    if args.tiny_vae and not args.sample:
        raise UsageError("--tiny-vae is a sampling option; use it with --sample")
    prompts = read_prompts(args.prompts)
    (sample if args.sample else train)(args, prompts)


if __name__ == "__main__":
    main()
