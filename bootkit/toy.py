"""bootkit/toy.py: train_toy.py's recipe, shared with the benchmark: its flags and their defaults per teacher kind,
the teacher and student they build, and the training loop (runtime.Trainer over boot.boot_loss)."""
import argparse
import contextlib
import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

import boot
from bootkit import exact, pixel, runtime

KINDS = {
    "2-D": dict(steps=4000, batch_size=1024, lr=1e-2, width=128, depth=8, bootstrap_steps=8, ema=0.99,
                corrector_weight=0.0),
    "digits": dict(steps=3000, batch_size=256, lr=2e-3, width=512, depth=6, bootstrap_steps=16, ema=0.99,
                   corrector_weight=0.0),
    # Pixels: the student starts as the teacher and needs no target network; the corrector on, at weight 1: it beat
    # BOOT alone at every budget raced on both learned MNIST teachers, 5 to 30 minutes (docs/recipes.md); width: the
    # UNet from scratch (--no-init-from-teacher); no depth.
    "pixels": dict(steps=2500, batch_size=64, lr=2e-4, width=64, depth=0, bootstrap_steps=16, init_from_teacher=True,
                   ema=0.0, corrector_weight=1.0),
}


RESUMABLE = {"steps", "out", "resume", "overwrite", "device", "ckpt_every", "eval_samples", "reference_steps", "judge"}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description="train_toy.py: distill a teacher into a one-call student with BOOT, and show how close it gets.")
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
    p.add_argument("--spacing", choices=boot.SPACINGS, help="time grid: uniform in t, t = (k/N)^2, or uniform in lambda "
                   "(default quadratic; t on an EDM teacher, whose t is Karras' rho-spacing already)")
    p.add_argument("--order", type=int, choices=(1, 2), default=2, help="teacher step: 1 = DDIM, 2 = Heun (2 calls)")
    p.add_argument("--jump", type=pos, default=1, help="teacher steps per bootstrap target (fewer hops from T to 0)")
    p.add_argument("--weighting", choices=("inv_delta2", "constant"), default="inv_delta2", help="loss weight")
    p.add_argument("--boundary", choices=("exact", "loss"), default="exact", help="boundary condition at t = T")
    p.add_argument("--schedule", choices=("cosine", "linear", "flow", "edm"), default="cosine", help="exact teachers: noise "
                   "schedule, variance preserving (cosine, linear), rectified flow (shift 1) or EDM (sigma_max 80, rho 7)")
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
    p.add_argument("--corrector-weight", type=float, help="pixel teachers: weight of the data-free distribution "
                   "corrector (boot.corrector_loss, DMD's score difference on one-call samples) added to the loss; a "
                   "fake copy of the teacher learns the student's samples (0: off, BOOT alone; default pixels 1, "
                   "exact teachers 0)")
    p.add_argument("--corrector-batch", type=pos, default=32, help="one-call samples per step for the corrector")
    p.add_argument("--corrector-start", type=int, default=0, help="the step the corrector starts at (BOOT alone before)")
    p.add_argument("--fake-lr", type=posf, default=1e-4, help="Adam learning rate of the corrector's fake network")
    p.add_argument("--fake-updates", type=pos, default=1, help="the fake network's updates per student step")
    p.add_argument("--judge", help="pixel teachers: a judge folder (teachers/train_teacher.py's judge/) for the FD to its held-out "
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
        args.spacing = args.spacing or ("t" if args.schedule == "edm" else "quadratic")  # a pixel teacher's: in build
    if args.reference_steps is not None and args.reference_steps < 3:
        p.error(f"argument --reference-steps: at least 3 (the DDIM-k curve, k = 1, 2, ..., stops below it), "
                f"got {args.reference_steps}")
    if args.judge and not args.teacher:
        p.error("argument --judge: needs a pixel --teacher")
    if not (args.corrector_weight >= 0 and math.isfinite(args.corrector_weight)):
        p.error(f"argument --corrector-weight: must be 0 or more, got {args.corrector_weight}")
    if args.corrector_start < 0:
        p.error(f"argument --corrector-start: must be 0 or more, got {args.corrector_start}")
    if args.corrector_weight and kind != "pixels":
        p.error("argument --corrector-weight: needs a pixel --teacher (the fake network is a copy of the teacher's)")
    if args.jump > args.bootstrap_steps:
        p.error(f"argument --jump: at most --bootstrap-steps ({args.bootstrap_steps}), got {args.jump}")
    if args.out is None:
        name = Path(args.teacher.rstrip("/")).name if args.teacher else f"toy-{args.data}"
        args.out = str(Path("runs") / name)
    return args


def build(args, device):
    """(teacher, schedule, student, sample shape, exact teacher or None)."""
    torch.manual_seed(args.seed)  # the student's initial weights: set by --seed, the same on every rank
    if args.teacher is None:
        schedule = getattr(boot.Schedule, args.schedule)()
        toy = exact.digits_teacher(schedule) if args.data == "digits" else exact.toy_teacher(args.data, schedule)
        dim = toy.means.shape[1]  # the MLP reads and writes digits as flat 64-vectors
        student = boot.MLPStudent(dim=dim, width=args.width, depth=args.depth)
        return toy, schedule, student.to(device), (dim,), toy
    unet, read = pixel.load_pixel_teacher(args.teacher, device)
    args.spacing = args.spacing or ("t" if read.family == "edm" else "quadratic")  # the family is known from here on
    schedule, prediction = read.schedule, read.prediction
    try:  # a discrete teacher's timesteps bound the grid: N at most its steps, no two grid times on one timestep
        boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
    except ValueError as e:
        raise runtime.UsageError(f"--bootstrap-steps {args.bootstrap_steps}: {e}") from None
    teacher = pixel.pixel_teacher(unet, read)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if args.init_from_teacher:  # read at lambda = 0, where the conversion has gain 1 (boot.TeacherStudent)
        anchor = schedule.snap(schedule.time_of(0.0)).item()
        student = boot.TeacherStudent(pixel.AnchoredNet(unet, schedule, anchor, read).requires_grad_(True).train(), schedule,
                                      prediction=prediction, anchor=anchor)
    else:
        student = boot.UNetStudent(channels=shape[0], base=args.width)
    return teacher, schedule, student.to(device), shape, None


def optimization(args, student, budget=None):
    """Adam with warm-up then cosine decay to 0, and the EMA of the student's weights (None when --ema 0).
    budget: (start, seconds, warm-up share): the schedule runs over those seconds in place of args.steps."""
    optimizer = torch.optim.Adam(student.parameters(), lr=args.lr)
    ema = None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(student, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    if budget is not None:
        start, seconds, share = budget
        return optimizer, runtime.timed_warmup_cosine(optimizer, start=start, seconds=seconds, warmup_share=share), ema
    return optimizer, runtime.warmup_cosine(optimizer, args.steps, args.warmup), ema


class Corrector:
    """The data-free distribution corrector in train_toy's loop (BOOT.md section 10): a fake copy of the pixel teacher
    (loaded afresh from --teacher, trainable, its own Adam), the corrector term on --corrector-batch one-call samples
    with t ~ U[0.02, 0.98], then --fake-updates steps of the fake network's denoising loss on those samples, with t
    over all training times. The fake denoiser is the teacher's wrapper (clipping included) around the fake weights, so
    that a fake equal to the teacher gives exactly 0. Its noise comes from the step's generator: resume is exact."""
    T_RANGE = (0.02, 0.98)

    def __init__(self, args, d: runtime.Dist, teacher, schedule):
        unet, read = pixel.load_pixel_teacher(args.teacher, d.device)
        self.net = pixel.DiffusersNet(unet.requires_grad_(True).train(), read)
        self.trained = DistributedDataParallel(self.net) if d.world > 1 else self.net
        self.denoiser = pixel.pixel_teacher(unet, read)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.fake_lr)
        self.args, self.d, self.teacher, self.schedule, self.prediction = args, d, teacher, schedule, read.prediction

    def loss(self, model, step, gen, shape):
        """(weighted corrector loss, logs) of this step, after the fake network's updates; None before the start."""
        a = self.args
        if step < a.corrector_start:
            return None
        eps = torch.randn(a.corrector_batch, *shape, generator=gen, device=self.d.device)
        x = model(eps, eps.new_zeros(len(eps)))  # one call, with gradient
        t = boot.random_times(self.schedule, len(eps), lo=self.T_RANGE[0], hi=self.T_RANGE[1], generator=gen,
                              device=self.d.device)
        noise = torch.randn(x.shape, generator=gen, device=self.d.device)
        loss, logs = boot.corrector_loss(x, self.teacher, self.denoiser, noise, schedule=self.schedule, t=t)
        fake_losses = []
        for _ in range(a.fake_updates):  # after the term: this step's corrector reads the fake as it was
            t = boot.random_times(self.schedule, len(eps), generator=gen, device=self.d.device)
            noise = torch.randn(x.shape, generator=gen, device=self.d.device)
            fake = boot.fake_loss(self.trained, x, noise, schedule=self.schedule, prediction=self.prediction, t=t)
            fake_losses.append(runtime.extra_step(self.optimizer, fake, self.net, self.d))
        return a.corrector_weight * loss, logs | {"fake_loss": torch.stack(fake_losses).mean()}


def train(args, d: runtime.Dist, teacher, schedule, student, shape, budget=None):
    """BOOT on the teacher through runtime.Trainer, with the corrector when --corrector-weight > 0; returns (the
    student to evaluate (the EMA if on), the corrector's fake denoiser or None). budget: (start, seconds, warm-up
    share): the learning rate follows the seconds, no step starts after start + seconds."""
    grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing).to(d.device)
    config = boot.BootConfig(weighting=args.weighting, boundary=args.boundary, order=args.order, jump=args.jump)
    model = DistributedDataParallel(student) if d.world > 1 else student
    optimizer, lr_schedule, ema = optimization(args, student, budget)
    corrector = Corrector(args, d, teacher, schedule) if args.corrector_weight else None
    trainer = runtime.Trainer(out=args.out, model=model, optimizer=optimizer, lr_schedule=lr_schedule, ema=ema,
                              dist_info=d, config=vars(args), ckpt_every=args.ckpt_every,
                              extras={"fake": (corrector.net, corrector.optimizer)} if corrector else None)
    if args.resume and not trainer.resume(same_keys=sorted(set(vars(args)) - RESUMABLE)):
        d.say(f"--resume: no checkpoint in {args.out} loads; starting from step 0")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 and d.device.type == "cuda" else contextlib.nullcontext()

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, d.rank, step, d.device)
        eps = torch.randn(args.batch_size, *shape, generator=gen, device=d.device)
        k = torch.randint(1, args.bootstrap_steps + 1, (args.batch_size,), generator=gen, device=d.device)
        with autocast:
            loss, logs = boot.boot_loss(model, teacher, eps, schedule=schedule, grid=grid, config=config, k=k,
                                        target_student=ema.module if ema is not None else None)
            corrected = corrector and corrector.loss(model, step, gen, shape)
        if not corrected:
            return loss, logs
        return loss + corrected[0], logs | corrected[1] | {"terms": {"boot": loss, "corrector": corrected[0]}}

    trainer.fit(args.steps, loss_fn, desc=f"boot {Path(args.out).name}", until=budget and budget[0] + budget[1])
    return (ema.module if ema is not None else student).eval(), corrector and corrector.denoiser

