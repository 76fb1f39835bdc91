"""train_toy.py: distill a teacher into a one-call student with BOOT, and show how close it gets.

    python train_toy.py                         # exact 2-D Gaussian-mixture teacher, CPU, about 90 seconds
    python train_toy.py --data checkerboard     # other exact teachers: unequal, checkerboard, spiral, digits
    python train_toy.py --teacher google/ddpm-cifar10-32 --device cuda    # a diffusers pixel model

Writes into --out: metrics.json, samples.npz, samples.png, student.safetensors,
checkpoints/ (resume with --resume) and log.jsonl. torchrun --nproc_per_node N train_toy.py ... runs DDP.
"""
import argparse
import contextlib
import json
import logging
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import boot
import exact
import metrics
import runtime

# Defaults per teacher kind, measured (README: what each lever did); a flag overrides its entry.
KINDS = {
    "2-D": dict(steps=4000, batch_size=1024, lr=1e-2, width=128, depth=8, bootstrap_steps=8, ema=0.99),
    "digits": dict(steps=3000, batch_size=256, lr=2e-3, width=512, depth=6, bootstrap_steps=16, ema=0.99),
    # Pixels: the student starts as the teacher and needs no target network (docs/recipes.md, the learned MNIST
    # teacher); width: the UNet from scratch (--no-init-from-teacher); no depth.
    "pixels": dict(steps=2500, batch_size=64, lr=2e-4, width=64, depth=0, bootstrap_steps=16, init_from_teacher=True,
                   ema=0.0),
}
RUN_OUTPUTS = ("checkpoints", "metrics.json", "samples.npz", "samples.png", "student.safetensors", "log.jsonl")
# What a resumed run may change; everything else must match the checkpoint.
RESUMABLE = {"steps", "out", "resume", "overwrite", "device", "ckpt_every", "eval_samples", "reference_steps", "judge"}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__.split("\n")[0])
    pos, posf = runtime.positive(int), runtime.positive(float)
    p.add_argument("--data", default="mixture", help=f"exact teacher: 2-D {', '.join(exact.TOYS)}, or digits "
                                                      "(scikit-learn's 1,797 real 8x8 digits)")
    p.add_argument("--teacher", help="diffusers unconditional pixel model (hub id or folder, UNet2DModel + scheduler), "
                                     "e.g. google/ddpm-cifar10-32; replaces --data")
    p.add_argument("--init-from-teacher", action=argparse.BooleanOptionalAction, help="pixel teachers: start the student "
                   "as a copy of the teacher read at lambda = 0 (boot.TeacherStudent with an anchor), the student's time in "
                   "a new zero-initialised embedding; --no-init-from-teacher: boot.py's small UNet from scratch (default: on)")
    p.add_argument("--out", help="output folder (default: runs/toy-DATA or runs/NAME-OF-TEACHER)")
    p.add_argument("--steps", type=pos, help="training steps (default per teacher kind: 2-D 4000, digits 3000, pixels 2500)")
    p.add_argument("--batch-size", type=pos, help="noises per step and process, torchrun: N times as many in all (default 2-D 1024, digits 256, pixels 64)")
    p.add_argument("--lr", type=posf, help="peak Adam learning rate, warm-up then cosine decay to 0 (default 2-D 1e-2, digits 2e-3, pixels 2e-4)")
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--bootstrap-steps", type=pos, help="N, the steps of the bootstrap time grid (default 2-D 8, digits and pixels 16)")
    p.add_argument("--spacing", choices=boot.SPACINGS, default="quadratic", help="time grid: uniform in t, t = (k/N)^2, or uniform in lambda")
    p.add_argument("--order", type=int, choices=(1, 2), default=2, help="teacher step: 1 = DDIM, 2 = Heun (2 calls)")
    p.add_argument("--jump", type=pos, default=1, help="teacher steps per bootstrap target (fewer hops from T to 0)")
    p.add_argument("--weighting", choices=("inv_delta2", "constant"), default="inv_delta2", help="loss weight")
    p.add_argument("--boundary", choices=("exact", "loss"), default="exact", help="boundary condition at t = T")
    p.add_argument("--schedule", choices=("cosine", "linear"), default="cosine", help="2-D teachers: noise schedule")
    p.add_argument("--width", type=pos, help="student width, MLP (default 2-D 128, digits 512) or UNet base channels (pixels with --no-init-from-teacher: 64)")
    p.add_argument("--depth", type=pos, help="MLP student depth, residual blocks + 1 (default 2-D 8, digits 6)")
    p.add_argument("--ema", type=float, help="EMA decay of the student's weights (0: off); the EMA makes the bootstrap "
                   "targets (a target network) and is the student evaluated and saved (default 2-D and digits 0.99, pixels 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    p.add_argument("--bf16", action="store_true", help="CUDA: bf16 autocast for teacher and student")
    p.add_argument("--ckpt-every", type=pos, default=1000, help="checkpoint every this many steps (and on SIGINT/SIGTERM)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that already holds a run")
    p.add_argument("--eval-samples", type=pos, help="fixed noises for the figures (default: exact teachers 4096; "
                                                    "pixel teachers 1000 on CUDA, 256 on the CPU)")
    p.add_argument("--reference-steps", type=pos, help="DDIM steps of the converged reference, at least 3; the DDIM-k "
                                                       "curve stops below it (default: exact teachers 4096; pixel "
                                                       "teachers their own steps on CUDA, 64 on the CPU)")
    p.add_argument("--judge", help="pixel teachers: a judge folder (teachers.py's judge/) for the FD to its held-out "
                                   "digits and the class shares (default: the teacher folder's judge/ when it has one)")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error(f"argument --warmup: must be 0 or more, got {args.warmup}")
    if args.teacher is None and args.data not in exact.TOYS + ("digits",):
        p.error(f"argument --data: unknown exact teacher {args.data!r}; choose one of {', '.join(exact.TOYS)}, digits")
    kind = "pixels" if args.teacher else "digits" if args.data == "digits" else "2-D"
    if args.init_from_teacher and kind != "pixels":
        p.error("argument --init-from-teacher: needs a pixel --teacher")
    if kind == "pixels" and args.init_from_teacher is not False and args.width is not None:
        p.error("argument --width: the student from the teacher has the teacher's architecture; add "
                "--no-init-from-teacher for boot.py's UNet of this width")
    for key, value in KINDS[kind].items():  # what the user left unset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not 0 <= args.ema < 1:
        p.error(f"argument --ema: must be in [0, 1), got {args.ema}")
    if kind != "pixels":  # a formula is cheap to evaluate anywhere; a pixel teacher's evaluation is sized per device
        args.eval_samples, args.reference_steps = args.eval_samples or 4096, args.reference_steps or 4096
    if args.reference_steps is not None and args.reference_steps < 3:
        p.error(f"argument --reference-steps: at least 3 (the DDIM-k curve, k = 1, 2, ..., stops below it), "
                f"got {args.reference_steps}")
    if args.judge and not args.teacher:
        p.error("argument --judge: needs a pixel --teacher")
    if args.jump > args.bootstrap_steps:
        p.error(f"argument --jump: at most --bootstrap-steps ({args.bootstrap_steps}), got {args.jump}")
    if args.out is None:
        name = Path(args.teacher.rstrip("/")).name if args.teacher else f"toy-{args.data}"
        args.out = str(Path("runs") / name)
    return args


# ----------------------------------------------------------------------------------------------------
# Teachers and students.


class DiffusersNet(torch.nn.Module):
    """net(x, timestep, cond) -> prediction, for diffusers' UNet2DModel (which returns `.sample`)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, timestep, cond=None):
        return self.unet(x, timestep.expand(len(x))).sample


class AnchoredNet(torch.nn.Module):
    """The student side of boot.TeacherStudent(anchor=t_a): a copy of the teacher's UNet2DModel that always reads
    its input at the timestep of t_a, and the student's time through a new time embedding (diffusers'
    class_embed_type "timestep") whose last layer starts at zero, so that it starts as the teacher read at t_a."""

    def __init__(self, unet, schedule: boot.Schedule, anchor: float):
        super().__init__()
        from diffusers import UNet2DModel
        if unet.config.class_embed_type is not None or unet.config.num_class_embeds:
            raise runtime.UsageError("--init-from-teacher: a class-conditional UNet2DModel cannot take the student's "
                                     "time embedding")
        self.unet = UNet2DModel.from_config({**unet.config, "class_embed_type": "timestep"}).to(unet.device)
        self.unet.load_state_dict(unet.state_dict(), strict=False)  # all but the new class_embedding
        torch.nn.init.zeros_(self.unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(self.unet.class_embedding.linear_2.bias)
        self.register_buffer("timestep", schedule.teacher_time(torch.tensor([anchor])), persistent=False)

    def forward(self, x, time, cond=None):
        return self.unet(x, self.timestep.expand(len(x)), class_labels=time.expand(len(x))).sample


def load_pixel_teacher(source: str, device):
    """(UNet2DModel, boot_diffusers.TeacherSchedule) from a hub id or folder: the pipeline layout (unet/,
    scheduler/) or the flat one of google/ddpm-cifar10-32 (config.json and scheduler_config.json side by side)."""
    import boot_diffusers  # imports diffusers: seconds, which the exact teachers need not wait
    from diffusers import UNet2DModel
    errors, log = [], logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.CRITICAL)  # diffusers logs each failed attempt; the one error line below says it all
    try:
        for sub in ("unet", None):
            try:  # safetensors only: a pickled .bin can run arbitrary code
                unet = UNet2DModel.from_pretrained(source, subfolder=sub, use_safetensors=True)
                break
            except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError... keep the first cause
                errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
        else:
            raise runtime.UsageError(f"--teacher {source!r} is not a loadable diffusers UNet2DModel ({errors[0]})")
        teacher = boot_diffusers.read_scheduler(source, subfolder="scheduler" if sub else None, what=f"--teacher {source!r}")
    finally:
        log.setLevel(level)
    return unet.to(device).eval().requires_grad_(False), teacher


def pixel_teacher(unet, read) -> boot.Teacher:
    """f(x_t, t) -> x0 as diffusers' DDIM computes it from this UNet and its boot_diffusers.TeacherSchedule
    (clipping included)."""
    return read.finish(boot.denoiser(DiffusersNet(unet), read.schedule, prediction=read.prediction))


def build(args, device):
    """(teacher, schedule, student, sample shape, exact teacher or None)."""
    torch.manual_seed(args.seed)  # the student's initial weights: set by --seed, the same on every rank
    if args.teacher is None:
        schedule = getattr(boot.Schedule, args.schedule)()
        toy = exact.digits_teacher(schedule) if args.data == "digits" else exact.toy_teacher(args.data, schedule)
        dim = toy.means.shape[1]  # the MLP reads and writes digits as flat 64-vectors
        student = boot.MLPStudent(dim=dim, width=args.width, depth=args.depth)
        return toy, schedule, student.to(device), (dim,), toy
    unet, read = load_pixel_teacher(args.teacher, device)
    schedule, prediction = read.schedule, read.prediction
    teacher = pixel_teacher(unet, read)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if args.init_from_teacher:  # read at lambda = 0, where the conversion has gain 1 (boot.TeacherStudent)
        anchor = schedule.snap(schedule.time_of(0.0)).item()
        student = boot.TeacherStudent(AnchoredNet(unet, schedule, anchor).requires_grad_(True).train(), schedule,
                                      prediction=prediction, anchor=anchor)
    else:
        student = boot.UNetStudent(channels=shape[0], base=args.width)
    return teacher, schedule, student.to(device), shape, None


# ----------------------------------------------------------------------------------------------------
# Training.


def optimization(args, student):
    """Adam with warm-up then cosine decay to 0, and the EMA of the student's weights (None when --ema 0)."""
    optimizer = torch.optim.Adam(student.parameters(), lr=args.lr)
    ema = None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(student, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    return optimizer, runtime.warmup_cosine(optimizer, args.steps, args.warmup), ema


def train(args, d: runtime.Dist, teacher, schedule, student, shape):
    """BOOT on the teacher through runtime.Trainer; returns the student to evaluate (the EMA if on)."""
    grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing).to(d.device)
    config = boot.BootConfig(weighting=args.weighting, boundary=args.boundary, order=args.order, jump=args.jump)
    model = DistributedDataParallel(student) if d.world > 1 else student
    optimizer, lr_schedule, ema = optimization(args, student)
    trainer = runtime.Trainer(out=args.out, model=model, optimizer=optimizer, lr_schedule=lr_schedule, ema=ema,
                              dist_info=d, config=vars(args), ckpt_every=args.ckpt_every)
    if args.resume and not trainer.resume(same_keys=sorted(set(vars(args)) - RESUMABLE)):
        d.say(f"--resume: no checkpoint in {args.out} loads; starting from step 0")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 and d.device.type == "cuda" else contextlib.nullcontext()

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, d.rank, step, d.device)
        eps = torch.randn(args.batch_size, *shape, generator=gen, device=d.device)
        k = torch.randint(1, args.bootstrap_steps + 1, (args.batch_size,), generator=gen, device=d.device)
        with autocast:
            return boot.boot_loss(model, teacher, eps, schedule=schedule, grid=grid, config=config, k=k,
                                  target_student=ema.module if ema is not None else None)

    trainer.fit(args.steps, loss_fn, desc=f"boot {Path(args.out).name}")
    return (ema.module if ema is not None else student).eval()


# ----------------------------------------------------------------------------------------------------
# Figures.


def eval_sizes(args, device, schedule):
    """(noises, reference DDIM steps, batch) of a pixel teacher's evaluation: the flags, or defaults sized to the
    device, since each step is a network call: on CUDA 1,000 noises and the teacher's own steps (the full
    figures), on the CPU 256 noises and DDIM-64 (minutes on a real teacher, seconds on a tiny one)."""
    cuda = device.type == "cuda"
    n, steps = args.eval_samples or (1000 if cuda else 256), args.reference_steps or (4096 if cuda else 64)
    return n, min(steps, schedule.train_steps or steps), 250 if cuda else 64  # a discrete teacher has n steps at most


def ticking(teacher, bar):
    """The teacher, advancing a progress bar once per call."""
    def call(x_t, t, cond=None):
        bar.update(1)
        return teacher(x_t, t, cond)
    return call


def judged(judge, sets: dict) -> dict:
    """The judge's FD to its reference (held-out digits) and class shares, for each named set of images."""
    model, ref_mean, ref_cov = judge
    classes = model.config["classes"]
    return {"fd": {name: metrics.judge_fd(model, x, ref_mean, ref_cov) for name, x in sets.items()},
            "class_share": {name: metrics.mode_shares(metrics.judge_classes(model, x), classes) for name, x in sets.items()}}


def evaluate(args, teacher, schedule, student, shape, device, toy, judge=None):
    """Fidelity on fixed noise: the student's one call against the teacher's converged DDIM from the same
    noise, the teacher's own DDIM-k curve (k below the reference's steps), effective NFE, speed; for exact
    teachers, distance to the data; with a judge (load_judge), FD and class shares of each sampler."""
    if toy is None:
        n, ref_steps, batch = eval_sizes(args, device, schedule)
    else:  # set by parse_args; the exact teacher is one batch
        n, ref_steps, batch = args.eval_samples, args.reference_steps, None
    ks = [k for k in metrics.DDIM_KS if k < ref_steps]  # DDIM-ref_steps is the reference itself: error 0
    print(f"evaluation on {device.type}: {n} noises{' (default)' if args.eval_samples is None else ''}, reference "
          f"DDIM-{ref_steps}{' (default)' if args.reference_steps is None else ''}, DDIM-k curve k = 1 ... {ks[-1]} "
          "(--eval-samples, --reference-steps)")
    eps = torch.randn(n, *shape, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    per_pixel, chunks = shape != (2,), 1 if batch is None else math.ceil(n / batch)
    sample = lambda k, bar: metrics.batched(lambda e: boot.ddim_sample(ticking(teacher, bar), e, schedule=schedule,
                                                                         steps=k), eps, batch)
    with tqdm(total=chunks * ref_steps, desc=f"reference DDIM-{ref_steps}", unit="call", dynamic_ncols=True) as bar:
        reference = sample(ref_steps, bar)
    with tqdm(total=chunks * sum(ks), desc="DDIM-k curve", unit="call", dynamic_ncols=True) as bar:
        ddim = {k: sample(k, bar) for k in ks}
    student_x = metrics.batched(lambda e: boot.sample_student(student, e), eps, batch)
    curve = {k: metrics.rmse(x, reference, per_pixel) for k, x in ddim.items()}
    student_rmse = metrics.rmse(student_x, reference, per_pixel)
    # BOOT's any-t sampling: the student to the grid time t_j, then j teacher steps of the training's order.
    grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing).to(device)
    js = [j for j in (1, 2, 4, 8, 16, 32) if j < args.bootstrap_steps]
    with tqdm(total=chunks * args.order * sum(js), desc="any-t sampling", unit="call", dynamic_ncols=True) as bar:
        any_t = {j: metrics.batched(lambda e: boot.sample_any_t(student, ticking(teacher, bar), e, schedule=schedule,
                                                                grid=grid, j=j, order=args.order), eps, batch) for j in js}
    speed_eps = eps[:batch or n]
    out = {
        "student_rmse": student_rmse,
        "teacher_ddim_rmse": {str(k): v for k, v in curve.items()},
        "effective_nfe": metrics.effective_nfe(student_rmse, curve),
        "any_t": [dict(teacher_steps=j, calls=1 + args.order * j, rmse=err, effective_nfe=metrics.effective_nfe(err, curve))
                  for j, err in ((j, metrics.rmse(x, reference, per_pixel)) for j, x in any_t.items())],
        "samples_per_s": {"student": metrics.samples_per_second(lambda e: boot.sample_student(student, e), speed_eps),
                          **{f"teacher_ddim_{k}": metrics.samples_per_second(
                              lambda e: boot.ddim_sample(teacher, e, schedule=schedule, steps=k), speed_eps, repeats=1)
                             for k in ks}},
        "eval_samples": n,
        "reference": f"teacher DDIM-{ref_steps} from the same noise",
        "rmse": "per-pixel" if per_pixel else "per-sample (Euclidean)",
    }
    if judge is not None:
        sets = {"student": student_x, "reference": reference, **{f"teacher_ddim_{k}": x for k, x in ddim.items()}}
        out["judge"] = judged(judge, sets)
    arrays = {"noise": eps, "student": student_x, "teacher": reference, **{f"ddim_{k}": x for k, x in ddim.items()}}
    if toy is not None:
        data, data_labels = toy.sample(n, generator=torch.Generator().manual_seed(args.seed + 2))
        arrays["data"] = data
        out["energy_distance"] = {"student": metrics.energy_distance(student_x.cpu(), data),
                                  "teacher": metrics.energy_distance(reference.cpu(), data)}
        k = int(toy.labels.max()) + 1
        out["mode_share"] = {"data": metrics.mode_shares(data_labels, k),
                             "student": metrics.mode_shares(toy.nearest_label(student_x), k),
                             "teacher": metrics.mode_shares(toy.nearest_label(reference), k)}
        if toy.finite:  # a finite set: the share of samples that end on the very point the teacher's trajectory ends on
            teacher_end = toy.nearest(reference)
            ends_on = lambda x: toy.nearest(x).eq(teacher_end).double().mean().item()
            ddim_8 = ddim[8] if 8 in ddim else boot.ddim_sample(teacher, eps, schedule=schedule, steps=8)
            out["same_point"] = {"student": ends_on(student_x), "teacher_ddim_8": ends_on(ddim_8)}
        if (toy.stds > 0).all():  # mixtures: the share of samples within 3 std of a mode
            near = lambda x: (torch.cdist(x.double().cpu(), toy.means) / toy.stds).min(1).values.le(3).double().mean().item()
            out["within_3_std"] = {"student": near(student_x), "teacher": near(reference), "data": near(data)}
    return out, {k: v.cpu() for k, v in arrays.items()}


def print_table(m: dict):
    rows = [("student, 1 call", m["student_rmse"], m["samples_per_s"]["student"], "student")]
    rows += [(f"teacher DDIM-{k}", v, m["samples_per_s"][f"teacher_ddim_{k}"], f"teacher_ddim_{k}")
             for k, v in m["teacher_ddim_rmse"].items()]
    head = f"| sampler | RMSE to converged teacher ({m['rmse']}) | samples/s |"
    judge = m.get("judge")
    if judge:  # FD to the judge's held-out digits, and the least and most frequent class (uniform: 1 / classes)
        rows.append((m["reference"].split(" from")[0] + " (the reference)", 0.0, None, "reference"))
        head += " FD to held-out digits | class shares, min - max |"
    print(f"\n{head}\n|{'---|' * head.count(' | ')}---|")
    for name, err, speed, key in rows:
        line = f"| {name} | {err:.4f} | {'-' if speed is None else f'{speed:,.0f}'} |"
        if judge:
            shares = judge["class_share"][key]
            line += f" {judge['fd'][key]:.2f} | {min(shares):.3f} - {max(shares):.3f} |"
        print(line)
    if judge:
        print("student's class shares: " + " ".join(f"{s:.3f}" for s in judge["class_share"]["student"]))
    print(f"\neffective NFE of the one-call student: {m['effective_nfe']:.1f}")
    if m["any_t"]:
        print("any-t sampling (one student call to t_j, then j teacher steps): " + ", ".join(
            f"{r['calls']} calls RMSE {r['rmse']:.4f} (NFE {r['effective_nfe']:.1f})" for r in m["any_t"]))
    if "energy_distance" in m:
        ed = m["energy_distance"]
        print(f"energy distance to fresh data: student {ed['student']:.5f}, teacher {ed['teacher']:.5f} "
              f"(ratio {ed['student'] / max(ed['teacher'], 1e-12):.2f})")
        share = m["mode_share"]
        worst = min(s / d for s, d in zip(share["student"], share["data"]) if d > 0)
        print(f"mode coverage: every mode hit: {all(s > 0 for s in share['student'])}, "
              f"least-covered mode at {worst:.2f}x its data share")
    if "same_point" in m:
        print(f"samples nearest the data point the converged teacher ends on: student {m['same_point']['student']:.3f}, "
              f"teacher DDIM-8 {m['same_point']['teacher_ddim_8']:.3f}")
    if "within_3_std" in m:
        print(f"samples within 3 std of a mode: student {m['within_3_std']['student']:.3f}, "
              f"teacher {m['within_3_std']['teacher']:.3f}, data {m['within_3_std']['data']:.3f}")


def find_judge(args, shape, device):
    """(judge, reference mean, reference covariance) from --judge or the teacher folder's judge/; None without."""
    folder = args.judge or (args.teacher and Path(args.teacher, "judge").is_dir() and str(Path(args.teacher, "judge")))
    if not folder:
        return None
    try:
        judge = metrics.load_judge(folder, device)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # missing file, bad JSON or weights
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise runtime.UsageError(f"--judge {folder} is not a judge folder that teachers.py wrote ({reason})") from None
    size = judge[0].config["size"]
    if tuple(shape) != (1, size, size):
        raise runtime.UsageError(f"--judge {folder} reads 1x{size}x{size} images; the teacher makes "
                                 f"{'x'.join(map(str, shape))}")
    return judge


def plot_2d(path, arrays, student, fixed_point, grid):
    """Data, teacher and student side by side, and for a few noises the student's y_t on the grid beside its
    fixed point, the teacher's N-step sampler (the signals a perfect student returns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    lim = float(max(arrays["data"].abs().max(), 2.0)) * 1.1
    for ax, key, title in zip(axes, ("data", "teacher", "student"), ("data", "teacher (converged DDIM)", "student (one call)")):
        ax.scatter(*arrays[key][:, :2].T.numpy(), s=1, alpha=0.4)
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax = axes[3]
    ax.scatter(*arrays["data"][:2000].T.numpy(), s=1, alpha=0.08, c="gray")
    device = next(student.parameters()).device
    with torch.no_grad():
        for i, eps in enumerate(arrays["noise"][:12].to(device)):
            y = student(eps.expand(len(grid), 2), grid.to(device, torch.float32)).cpu()
            line, = ax.plot(*y.T.numpy(), lw=1, marker=".", ms=3)
            ax.plot(*fixed_point[:, i].T.numpy(), lw=1, ls="--", c=line.get_color())
            ax.scatter(*y[0].numpy(), s=14, c="k", zorder=3)
    ax.set(title="y_t on the grid: student -, fixed point --", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_grid(path, images, rows):
    """Images in [-1, 1] of shape (B, C, H, W) as one PNG, `rows` rows."""
    from PIL import Image
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    b, c, h, w = x.shape
    cols = math.ceil(b / rows)
    canvas = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(b):
        canvas[:, (i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = x[i]
    arr = canvas.permute(1, 2, 0).numpy()
    image = Image.fromarray(arr[..., 0] if c == 1 else arr[..., :3])
    zoom = max(1, 32 // h)  # small images (8x8 digits) are enlarged so that one can see them
    image.resize((image.width * zoom, image.height * zoom), Image.NEAREST).save(path)


def write_pixel_grids(out, arrays):
    """samples.png: rows of the student (one call), the teacher's DDIM-1, 4, 16 (those below the reference's
    steps) and the converged reference, from the same 8 noises."""
    keys = ["student"] + [f"ddim_{k}" for k in (1, 4, 16) if f"ddim_{k}" in arrays] + ["teacher"]
    save_grid(out / "samples.png", torch.cat([arrays[key][:8] for key in keys]), rows=len(keys))


# ----------------------------------------------------------------------------------------------------


@runtime.cli
def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    runtime.check_out(out, allowed=args.resume or args.overwrite, hint="add --resume to continue it, or --overwrite")
    d = runtime.setup(args.device)
    teacher, schedule, student, shape, toy = build(args, d.device)  # fails before anything is written
    judge = find_judge(args, shape, d.device)
    if args.overwrite and d.main:
        runtime.clear(out, RUN_OUTPUTS)
    if d.main:
        what = f"exact {args.data} teacher" if toy is not None else f"teacher {args.teacher}"
        print(f"BOOT: {what}, {sum(p.numel() for p in student.parameters()):,}-parameter student, "
              f"N = {args.bootstrap_steps}, {args.steps} steps of batch {args.batch_size}")
    evaluated = train(args, d, teacher, schedule, student, shape)
    if not d.main:
        return
    save_file({k: v.contiguous() for k, v in evaluated.state_dict().items()}, out / "student.safetensors")
    m, arrays = evaluate(args, teacher, schedule, evaluated, shape, d.device, toy, judge)
    m["config"] = vars(args)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    np.savez(out / "samples.npz", **{k: v.numpy() for k, v in arrays.items()})
    if toy is None:
        write_pixel_grids(out, arrays)
    elif shape == (2,):
        grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
        noise = arrays["noise"][:12].to(d.device)
        ys = boot.fixed_point(teacher, noise, schedule=schedule, grid=grid.to(d.device), order=args.order)
        plot_2d(out / "samples.png", arrays, evaluated, ys.cpu(), grid)
    else:  # digits: rows of data, teacher (converged DDIM) and student (one call)
        rows = [arrays[key][:16].reshape(16, *toy.shape) for key in ("data", "teacher", "student")]
        save_grid(out / "samples.png", torch.cat(rows), rows=3)
    print_table(m)
    print(f"\nwrote {out}/: metrics.json, samples.png, samples.npz, student.safetensors, checkpoints/")

if __name__ == "__main__":
    main()
