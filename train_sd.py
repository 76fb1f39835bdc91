"""train_sd.py: BOOT for Stable Diffusion from a prompts file alone, and one-call sampling with the student.

    python train_sd.py --prompts prompts.txt                        # SD 1.5 teacher, writes runs/sd
    python train_sd.py --prompts prompts.txt --guidance-range 2,8   # one student for every w in [2, 8]
    python train_sd.py --sample runs/sd --prompts mine.txt          # one UNet call per batch of images
    python train_sd.py --evaluate runs/mnist --prompts teachers/mnist-t2i/prompts.txt   # judged figures of a digit run

boot.py is the algorithm; bootkit/sd.py adapts a diffusers Stable Diffusion to it (its conventions are stated
there), bootkit/runtime.py keeps the run alive (checkpoints, --resume, signals, torchrun), bootkit/judging.py scores
digit teachers and bootkit/card.py writes what the run hands over. This file parses, builds, runs and writes.
- Recipe (the defaults, measured on teachers/mnist-t2i; README): no target network, Heun's teacher step on the
  quadratic grid with N = 16, a constant lr of 3e-4 for a UNet under 100 M parameters (1e-5 above: Stable
  Diffusion, unmeasured).
- With --guidance-range every example draws its own w, which guides its teacher target and enters the student;
  without, w is the one --guidance-scale.
- The run's pipeline/ folder is a StableDiffusionPipeline: the teacher's text encoder and VAE, the student UNet (its
  unet/, moved to read t = 0 at LCMScheduler's timestep), diffusers' own LCMScheduler and a model card. Stock
  diffusers loads it in one call and draws the same images as --sample in one UNet call (num_inference_steps=1);
  boot_diffusers.BootPipeline also refuses what a one-step student cannot honour.
- --resume continues a run with the recipe it was started with: a changed flag outside RESUMABLE is refused.
"""
import time

LAUNCHED = time.perf_counter()  # before the imports: run as a script, --time-limit counts them (bench/race.py's budgets do)

import argparse
import contextlib
import json
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

import torch
from PIL import Image

import boot
from bootkit import card, judging, pictures, runtime, sd
from bootkit.racing import Counting
from bootkit.runtime import UsageError

RUN_OUTPUTS = ("checkpoints", "validation", "figures", sd.PIPELINE, sd.LORA, "boot_sd.json", "log.jsonl")  # --overwrite clears
# The flags that may change on --resume: where and how long the run goes, what it shows and checks at the end, and
# the sampling-only ones (never set in training). Every other flag is the recipe, recorded and compared.
RESUMABLE = {"out", "resume", "overwrite", "device", "steps", "time_limit", "ckpt_every", "validate_every", "validation_prompts",
             "gradient_checkpointing", "judge", "eval_samples", "sample", "evaluate", "teacher_steps", "tiny_vae"}
VALIDATION_IMAGES = 4  # prompts of the validation picture by default (the first training prompts)
MAX_VALIDATION_IMAGES = 16  # a --validation-prompts file may hold up to this many
# Default --lr by the UNet's size: measured on teachers/mnist-t2i's 1 M parameters (README); at Stable Diffusion's
# 860 M, a full fine-tune's rate (not measured here: no GPU), since Adam moves every weight about lr a step.
LR_SMALL, LR_LARGE, LARGE_UNET = 3e-4, 1e-5, 100_000_000
LR_LORA_LARGE = 1e-4  # a LoRA student of a large UNet: LCM-LoRA's rate (not measured here)
WARMUP = 200  # steps of learning-rate warm-up of --lr-schedule cosine
EVAL_SAMPLES = {"cuda": 500, "cpu": 100}  # default --eval-samples: 500 as the teacher's figures; ~1 min on 2 CPU cores


def lr_schedule(optimizer, args):
    """--lr-schedule cosine: WARMUP steps of linear warm-up, then a cosine decay to 0 at --steps (train_toy.py's);
    constant: lr throughout."""
    return None if args.lr_schedule == "constant" else runtime.warmup_cosine(optimizer, args.steps, WARMUP)


# ----------------------------------------------------------------------------------------------------
# Training, sampling and the judged evaluation.


def training_flags(args, prompts):
    """Training's own checks, before anything loads: (w of the validation pictures and sampling's default,
    the guidance range (lo, hi), the validation prompts)."""
    if args.ema is not None and args.ema >= 1:
        raise UsageError(f"--ema {args.ema}: the decay must be below 1 (e.g. 0.999)")
    if args.lora_rank and args.guidance_range:
        raise UsageError("--lora-rank with --guidance-range: a LoRA cannot carry the student's guidance input; bake one "
                         "w with --guidance-scale (as LCM-LoRA and DMD2 do), or train the full student for a range")
    sd.check_corrector_flags(args)
    if args.dtype == "fp16":  # runtime.Trainer has no loss scaling: fp16 gradients would underflow unseen
        raise UsageError("--dtype fp16 trains without loss scaling here; train in bf16 or fp32 "
                         "(fp16 is fine for --sample)")
    w_val = args.guidance_scale
    if w_val is None:
        w_val = sum(args.guidance_range) / 2 if args.guidance_range else 7.5
    lo, hi = args.guidance_range or (w_val, w_val)
    if not lo <= w_val <= hi:
        raise UsageError(f"--guidance-scale {w_val} is outside --guidance-range {lo},{hi}")
    val_prompts = prompts
    if args.validation_prompts:
        val_prompts = sd.read_prompts(args.validation_prompts, "--validation-prompts")
        if len(val_prompts) > MAX_VALIDATION_IMAGES:
            raise UsageError(f"--validation-prompts {args.validation_prompts}: {len(val_prompts)} prompts; "
                             f"the validation picture takes at most {MAX_VALIDATION_IMAGES}")
    return w_val, (lo, hi), val_prompts


def make_student(args, teacher_name: str, d, parts):
    """(the student: the teacher's UNet with a guidance input, or with --lora-rank the teacher's own UNet (parts.unet)
    with LoRA adapters; what trains it, DDP-wrapped under torchrun; its EMA, None when off; the learning rate, --lr
    or by the UNet's size)."""
    student = (sd.add_lora(parts.unet, args.lora_rank) if args.lora_rank else
               sd.make_student(teacher_name, sd3=parts.sd3).to(d.device))
    large = sum(p.numel() for p in student.parameters()) >= LARGE_UNET
    lr = args.lr or (LR_SMALL if not large else LR_LORA_LARGE if args.lora_rank else LR_LARGE)
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
    return student, model, ema, lr


class Validation:
    """Rank 0's picture of the student (one call) below its fixed point, the teacher's N steps down the run's grid
    with the run's step, on fixed prompts and noise; `figures` holds the latest one's numbers (boot_sd.json, the card)."""

    def __init__(self, args, out: Path, parts, teacher, texts, encode, null, *, shape, grid, w: float, d, dtype,
                 fake=None):
        self.args, self.out, self.parts, self.teacher, self.texts, self.null = args, out, parts, teacher, texts, null
        self.fake = fake  # the corrector: its fake network's DDIM-N becomes a third row, where a collapse shows
        self.grid, self.w_val, self.device, self.dtype = grid, w, d.device, dtype
        self.eps = torch.randn(len(texts), *shape, generator=torch.Generator(d.device).manual_seed(args.seed), device=d.device)
        self.cond, self.w = encode(texts), torch.full((len(texts),), w, device=d.device)
        self.reference, self.figures = None, {}  # the teacher's latents and row of images, drawn once

    def __call__(self, step: int, student):
        args, schedule, prediction = self.args, self.parts.teacher.schedule, self.parts.teacher.prediction
        with sd.autocast(self.device, self.dtype), sd.evaluating(student) as model_now:
            if self.reference is None:
                guided = self.parts.teacher.finish(boot.guided(self.teacher, scale=self.w, null_cond=self.null))
                ddim = boot.fixed_point(guided, self.eps, schedule=schedule, grid=self.grid, cond=self.cond,
                                        order=args.order)[0]
                self.reference = ddim.float(), sd.decode(self.parts.vae, ddim)
            mine = boot.sample_student(sd.student_fn(model_now, schedule, prediction, self.w), self.eps, self.cond)
            fake = None if self.fake is None else boot.ddim_sample(self.fake.denoiser(self.w), self.eps, schedule=schedule,
                                                                   grid=self.grid, cond=self.cond)
        rms = lambda x: x.pow(2).mean().sqrt().item()
        self.figures.update(step=step, prompts=len(self.texts), rmse_to_teacher=rms(mine - self.reference[0]),
                            teacher_rms=rms(self.reference[0]))
        (self.out / "validation").mkdir(exist_ok=True)
        with open(self.out / "validation" / "log.jsonl", "a") as f:
            f.write(json.dumps(self.figures) + "\n")
        fixed_point = f"{'DDIM' if args.order == 1 else 'Heun'}-{args.bootstrap_steps}"
        rows, labels = [self.reference[1], sd.decode(self.parts.vae, mine)], [f"teacher {fixed_point}", "student, 1 call"]
        if fake is not None:
            rows.append(sd.decode(self.parts.vae, fake))
            labels.append(f"fake network DDIM-{args.bootstrap_steps}")
        pictures.save_labelled(self.out / "validation" / f"step-{step:08d}.png", rows, row_labels=labels,
                               col_labels=self.texts,
                               title=f"step {step}, w = {self.w_val:g}: the student below its fixed point (the teacher's "
                                     f"{fixed_point} on the {args.spacing} grid), same noise in a column")


def train(args, prompts, started: float):
    """started: time.perf_counter() at the process's start (main's), from which --time-limit counts."""
    out = Path(args.out or "runs/sd")
    runtime.check_out(out, allowed=args.resume or args.overwrite,
                      hint="pass --resume to continue the run there, or --overwrite to replace it")
    w_val, (lo, hi), val_prompts = training_flags(args, prompts)
    d = runtime.setup(args.device)
    args.dtype = sd.resolved_dtype(args.dtype, d.device)
    dtype, teacher_name = sd.DTYPES[args.dtype], args.teacher or sd.DEFAULT_TEACHER
    if Path(teacher_name).is_dir():  # recorded for sampling and resuming, wherever they run from
        teacher_name = str(Path(teacher_name).resolve())
    judged_by = judging.find_judge(args, prompts, teacher_name, d)  # before the teacher loads: a bad --judge fails at once
    parts = sd.load_teacher(teacher_name, dtype, d.device)
    if parts.sd3 and (args.guidance_range or args.lora_rank):
        raise UsageError(f"{'--guidance-range' if args.guidance_range else '--lora-rank'} with an SD3 teacher: "
                         + ("StableDiffusion3Pipeline feeds its transformer no guidance input, so its student bakes one w "
                            "(--guidance-scale)" if args.guidance_range else "a LoRA student of SD3's transformer is not "
                            "written yet; train the full student"))
    schedule, prediction = parts.teacher.schedule, parts.teacher.prediction
    try:
        grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
    except ValueError as e:
        raise UsageError(f"--bootstrap-steps {args.bootstrap_steps}: {e}") from None
    resolution = args.resolution or parts.unet.config.sample_size * sd.vae_scale(parts.vae)  # the teacher's own, as diffusers'
    shape = sd.latent_shape(parts.vae, parts.unet, resolution)
    judged_by = judging.judge_fits(judged_by, resolution, d)
    encode = sd.PromptEncoder(parts, d.device, warn=d.main, resolution=resolution)
    null = encode.null()  # the null branch of guidance: the empty prompt (zeros for most SDXL pipelines)
    if args.overwrite and d.main:
        runtime.clear(out, RUN_OUTPUTS)

    student, model, ema, lr = make_student(args, teacher_name, d, parts)
    if args.corrector_weight:  # the corrector's defaults resolved, as the recipe records them
        sd.corrector_defaults(args, batch=args.batch_size, lr=lr)
    # The recipe as it runs (the defaults resolved): what a resume must repeat, and what boot_sd.json records.
    config = {**{k: v for k, v in vars(args).items() if k not in RESUMABLE}, "teacher": teacher_name,
              "prompts": str(Path(args.prompts).resolve()), "resolution": resolution, "lr": lr,
              "guidance_scale": w_val, "prediction": prediction}
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)  # a LoRA's adapters
    teacher = sd.teacher_fn(parts.unet, schedule, prediction, lora_base=bool(args.lora_rank))
    counted = Counting(teacher)  # the rows training makes it evaluate (validation's are not counted)
    corrector = None
    if args.corrector_weight:
        corrector = sd.Corrector(args, teacher_name, d, teacher=counted, parts=parts, encode=encode, null=null,
                                 prompts=prompts, shape=shape, w_range=(lo, hi))
    trainer = runtime.Trainer(out=out, model=model, optimizer=optimizer, lr_schedule=lr_schedule(optimizer, args),
                              ema=ema, dist_info=d, config=config, ckpt_every=args.ckpt_every, clip=args.clip,
                              extras={"fake": (corrector.net, corrector.optimizer)} if corrector else None)
    if args.resume and not trainer.resume(same_keys=sorted(set(config) - {"prediction"})):  # the teacher's own
        d.say(f"--resume: no checkpoint in {out} yet; starting from the teacher")
    exported = lambda: ema.module if ema is not None else trainer.student  # what validation shows and the run hands over

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, d.rank, step, d.device)  # all of a step's randomness: exact resume
        b, device = args.batch_size, d.device
        eps = torch.randn(b, *shape, generator=gen, device=device)
        which = torch.randint(len(prompts), (b,), generator=gen, device=device)
        k = torch.randint(1, len(grid), (b,), generator=gen, device=device)
        w = lo + (hi - lo) * torch.rand(b, generator=gen, device=device)
        cond = encode(prompts.read(which.tolist()))  # this rank's own batch, nothing else
        loss, logs = sd.boot_sd_loss(model, counted, eps=eps, cond=cond, w=w, k=k, schedule=schedule, grid=grid,
                                     prediction=prediction, null_cond=null, dtype=dtype, finish=parts.teacher.finish,
                                     target=None if ema is None else ema.module, order=args.order)
        corrected = corrector and corrector.loss(model, step, gen, dtype)
        if not corrected:
            return loss, logs
        return loss + corrected[0], logs | corrected[1] | {"terms": {"boot": loss, "corrector": corrected[0]}}

    validation, every = None, None
    if d.main:
        texts = val_prompts.read(range(len(val_prompts) if args.validation_prompts else
                                       min(len(prompts), VALIDATION_IMAGES)))
        validation = Validation(args, out, parts, teacher, texts, encode, null, shape=shape, grid=grid, w=w_val, d=d,
                                dtype=dtype, fake=corrector)
        every = (args.validate_every, lambda step: validation(step, exported()))
    until = None if args.time_limit is None else started + 60 * args.time_limit
    trainer.fit(args.steps, loss_fn, desc="boot-sd", every=every, until=until)
    if not d.main:
        return
    if validation.figures.get("step") != trainer.step:  # every run ends with a picture of its final student
        validation(trainer.step, exported())
    g = sd.student_fn(exported(), schedule, prediction)
    card.save_pipeline(out / sd.PIPELINE, teacher_name, card.fused(exported()) if args.lora_rank else exported(), g,
                       resolution=resolution, guidance=(lo, hi), w=w_val)
    if args.lora_rank:
        card.save_lora(out / sd.LORA, teacher_name, exported(), g, w=w_val)
    # teacher_rows: this process's training (a resumed run's since its resume); a guided call is 2 rows
    meta = {**config, "steps": trainer.step, "teacher_rows": counted.rows, "validation": validation.figures,
            "guidance_input": bool(exported().config.get("time_cond_proj_dim"))}  # else one w baked in
    write_run(out, meta, g)  # the run is complete before the judged evaluation: --evaluate redoes that alone
    d.say(f"student in {out / sd.PIPELINE}; draw images with: python train_sd.py --sample {out} --prompts FILE, "
          f"or with diffusers' DiffusionPipeline at num_inference_steps=1 ({out / sd.PIPELINE / 'README.md'})")
    if judged_by is not None:
        # a LoRA student shares its module with the teacher: judged as its fused copy, the teacher's adapters off
        lora = bool(args.lora_rank)
        with sd.evaluating(card.fused(exported()) if lora else exported()) as model_now, \
                sd.adapters_off(parts.unet) if lora else contextlib.nullcontext():
            meta["judged"] = {"step": trainer.step, **judging.judge_student(
                parts, model_now, judged_by, prompts, ws=judging.judged_ws(w_val, args.guidance_range), shape=shape,
                samples=args.eval_samples or EVAL_SAMPLES.get(d.device.type, 100), dtype=args.dtype,
                device=d.device, out=out)}
        write_run(out, meta, g)
        d.say(judging.judged_table(meta["judged"]) + f"\n(in {out / 'boot_sd.json'}, pictures in {out / 'figures'})")


def sample(args, prompts):
    """One image per prompt, in prompt order, named for its index and its line in the prompts file
    (00000-line00001.png): one student UNet call per batch, plus --teacher-steps J guided teacher steps
    (boot.sample_any_t: the student to the grid time t_J, then J teacher steps of the run's order on its grid)."""
    run = Path(args.sample)
    meta = sd.read_run(run, "--sample")
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
    args.dtype = sd.resolved_dtype(args.dtype, d.device)
    dtype, teacher_name = sd.DTYPES[args.dtype], args.teacher or meta["teacher"]
    parts = sd.load_teacher(teacher_name, dtype, d.device, unet=args.teacher_steps > 0)
    from diffusers import AutoencoderTiny
    student = sd.load_student(run, "--sample", d.device)
    decoder = parts.vae
    if args.tiny_vae:  # the full SD decoder costs four times the student's call (BOOT.md section 7)
        load = AutoencoderTiny.from_pretrained
        decoder = sd.loaded(f"--tiny-vae {args.tiny_vae}", lambda: load(args.tiny_vae, torch_dtype=dtype, use_safetensors=True)).to(d.device)
    schedule = parts.teacher.schedule
    grid = boot.time_grid(schedule, meta["bootstrap_steps"], spacing=meta.get("spacing", "t")).to(d.device)
    shape = sd.latent_shape(parts.vae, student, meta["resolution"])
    encode = sd.PromptEncoder(parts, d.device, warn=True, resolution=meta["resolution"])
    null = encode.null() if args.teacher_steps else None  # the null branch of the teacher's guidance
    if args.overwrite:
        runtime.clear(out, ("*.png",))
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)  # on the CPU: the same noise on every device, as the pipeline's
    for start in range(0, len(prompts), args.batch_size):
        batch = range(start, min(start + args.batch_size, len(prompts)))
        cond = encode(prompts.read(batch))
        eps = sd.noise(gen, len(batch), shape, d.device)
        with sd.autocast(d.device, dtype):  # the conversion to the image stays in fp32 (sd.student_fn)
            w_batch = torch.full((len(batch),), w, device=d.device)
            g = sd.student_fn(student, schedule, meta["prediction"], w_batch)
            if args.teacher_steps:
                guided = parts.teacher.finish(boot.guided(sd.teacher_fn(parts.unet, schedule, meta["prediction"]), scale=w_batch,
                                                       null_cond=null))
                latents = boot.sample_any_t(g, guided, eps, schedule=schedule, grid=grid, j=args.teacher_steps, cond=cond,
                                            order=meta.get("order", 1))
            else:
                latents = boot.sample_student(g, eps, cond)
        for i, image in zip(batch, sd.decode(decoder, latents)):
            Image.fromarray(image).save(out / f"{i:05d}-line{prompts.lines[i]:05d}.png")
    order = meta.get("order", 1)  # Heun: two guided calls a step, one on the last (to t = 0)
    teacher_calls = order * args.teacher_steps - (order == 2)
    calls = f"1 student + {teacher_calls} guided teacher calls" if args.teacher_steps else "one UNet call"
    d.say(f"{len(prompts)} images at w = {w} in {out}, {calls} each")


def evaluate(args, prompts):
    """--evaluate RUN: the judged figures of a finished run's student, as training ends with them, into
    RUN/boot_sd.json ("judged", replaced) and RUN/figures/; the model card reports them."""
    run = Path(args.evaluate)
    meta = sd.read_run(run, "--evaluate")
    d = runtime.setup(args.device)
    args.dtype = sd.resolved_dtype(args.dtype, d.device)
    teacher_name = args.teacher or meta["teacher"]
    judged_by = judging.find_judge(args, prompts, teacher_name, d, required=f"--evaluate {run}")
    parts = sd.load_teacher(teacher_name, sd.DTYPES[args.dtype], d.device)
    student = sd.load_student(run, "--evaluate", d.device)
    shape = sd.latent_shape(parts.vae, student, meta["resolution"])
    judged_by = judging.judge_fits(judged_by, meta["resolution"], d)
    meta["judged"] = {"step": meta["steps"], **judging.judge_student(
        parts, student, judged_by, prompts, ws=judging.judged_ws(meta["guidance_scale"], meta["guidance_range"]), shape=shape,
        samples=args.eval_samples or EVAL_SAMPLES.get(d.device.type, 100), dtype=args.dtype, device=d.device, out=run)}
    write_run(run, meta, sd.student_fn(student, parts.teacher.schedule, meta["prediction"]))
    d.say(judging.judged_table(meta["judged"]) + f"\n(in {run / 'boot_sd.json'}, pictures in {run / 'figures'})")



def write_run(out: Path, meta: dict, g: boot.TeacherStudent):
    """boot_sd.json and the pipeline's model card."""
    (out / "boot_sd.json").write_text(json.dumps(meta, indent=1))
    (out / sd.PIPELINE / "README.md").write_text(card.model_card(meta, str(out / sd.PIPELINE), g))


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
    p.add_argument("--teacher", help=f"diffusers Stable Diffusion, hub id or folder (default {sd.DEFAULT_TEACHER}; "
                                     "with --sample or --evaluate, the run's)")
    p.add_argument("--out", help="output folder (default runs/sd; with --sample, RUN/samples)")
    p.add_argument("--dtype", choices=("auto", *sd.DTYPES), default="auto",
                   help="precision of the frozen teacher and of the student's autocast; the student's weights stay "
                        "fp32. auto: bf16 on CUDA, fp32 on the CPU (where bf16 is emulated: slower, and no more "
                        "accurate). fp16 only with --sample (training has no loss scaling)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--steps", type=positive(), default=10_000,
                   help="training steps in all (a resumed run counts its earlier ones)")
    p.add_argument("--time-limit", type=positive(float), metavar="MINUTES",
                   help="no training step starts after this many minutes from the start of the process; the run then "
                        "ends as at its last step (checkpoint, pipeline/, log). For a job's time limit, or races at "
                        "equal seconds (bench/race.py); the lr schedule still follows --steps")
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
    p.add_argument("--lora-rank", type=positive(), metavar="R",
                   help="train LoRA adapters of this rank (peft) on the teacher's UNet instead of a full copy, the base "
                        "frozen and, adapters off, the teacher: one copy of the weights. One w baked in (--guidance-scale; "
                        "no --guidance-range). Writes RUN/lora/pytorch_lora_weights.safetensors for the stock teacher "
                        "pipeline's load_lora_weights, beside the fused student in RUN/pipeline")
    sd.add_corrector_flags(p)
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
    again.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out, with the "
                       "flags the run was started with (only where and how long it runs, and what it shows, may change)")
    again.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    p.add_argument("--judge", metavar="FOLDER",
                   help="a digit teacher's judge (teachers/train_teacher.py's judge/): at the end of training (or with --evaluate), "
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
def main(argv=None, started=None):
    """started: a time.perf_counter() from which --time-limit counts (run as a script: LAUNCHED; default: now)."""
    started = time.perf_counter() if started is None else started
    args = parser().parse_args(argv)
    if (args.sample or args.evaluate) and args.validation_prompts:
        raise UsageError(f"--validation-prompts is a training option; {'--sample' if args.sample else '--evaluate'} "
                         "reads --prompts")
    if (args.tiny_vae or args.teacher_steps) and not args.sample:
        raise UsageError(f"{'--tiny-vae' if args.tiny_vae else '--teacher-steps'} is a sampling option; use it with --sample")
    if args.sample and (args.judge or args.eval_samples):
        raise UsageError(f"{'--judge' if args.judge else '--eval-samples'} is an option of training and --evaluate, "
                         "not of --sample")
    if (args.sample or args.evaluate) and args.time_limit:
        raise UsageError(f"--time-limit is a training option, not of {'--sample' if args.sample else '--evaluate'}")
    if args.evaluate and args.out:
        raise UsageError("--evaluate writes into RUN itself (boot_sd.json, figures/); it takes no --out")
    prompts = sd.read_prompts(args.prompts)
    if args.sample or args.evaluate:
        (sample if args.sample else evaluate)(args, prompts)
    else:
        train(args, prompts, started)


if __name__ == "__main__":
    main(started=LAUNCHED)
