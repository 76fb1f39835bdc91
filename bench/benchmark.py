"""bench/benchmark.py: where BOOT stands, in one run: fidelity per teacher call, speed per sample, cost per training step.

    python bench/benchmark.py                                  # every exact teacher on the CPU (about 20 minutes on 2 cores)
    python bench/benchmark.py --quick --teachers mixture digits --json /tmp/quick.json   # smoke run, under a minute
    python bench/benchmark.py --teachers mnist16 --json bench/results/learned.json   # the learned MNIST teacher (about 20 minutes)
    python bench/benchmark.py --teachers mnist-t2i --json bench/results/t2i.json     # train_sd.py on the text-to-image teacher
    python bench/benchmark.py --device cuda                    # on a GPU, plus the Stable-Diffusion-1.5-shaped step

Prints markdown tables, also written beside the JSON of all figures (--json, default bench/results/exact.json) as .md. BOOT students
are trained by train_toy.py's own recipe (bootkit.toy, bootkit.evaluation), with its defaults: only budgets are set here.
1. Fidelity (BOOT.md section 6): RMSE of the one-call student to the teacher's converged DDIM from the same noise,
   effective NFE on the teacher's DDIM-k curve, mode coverage (digits: classes of the nearest training images).
2. The baseline BOOT replaces, knowledge distillation (Luhman & Luhman 2021): P offline (noise, teacher DDIM-k)
   pairs, then the same student regressed at t = 0, same optimizer, schedule, steps and batch. Fidelity against
   teacher calls, counted for both in per-sample teacher evaluations (one call on one sample), and against seconds
   of this machine (BOOT's training; KD's pairs and training). Learned teachers (networks, teachers/train_teacher.py): also the
   judge's FD to held-out digits and its class shares.
3. Speed: one student call against DDIM-k of a teacher network of the student's architecture (an exact teacher
   is a formula: its cost says nothing of distillation); a training step against the sum of its parts.
4. Text-to-image teachers (teachers/mnist-t2i): train_sd.py with its defaults, timed, then judged per w: the
   student's one call against the teacher's guided DDIM-k, by prompted-digit accuracy and FD.
5. CUDA only: sd_step.run, a BOOT step at Stable-Diffusion-1.5 shape, with and without gradient checkpointing.
"""
import concurrent.futures
import copy
import datetime
import gc
import json
import math
import multiprocessing
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's root: boot.py and bootkit/

import torch

import boot
import sd_step
from bootkit import evaluation, exact, kd, metrics, runtime, toy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"  # the committed figures: exact.json, learned.json, t2i.json

# Committed network teachers (teachers/train_teacher.py): name -> folder under ROOT. A flow teacher's DDIM-k is the
# Euler-k of its ODE (the same step).
LEARNED = {"mnist16": "teachers/mnist16", "mnist16-flow": "teachers/mnist16-flow"}
TEXT = {"mnist-t2i": "teachers/mnist-t2i"}  # committed text-to-image teachers, distilled by train_sd.py
EXACT = exact.TOYS + ("digits",)
TEACHERS = EXACT + tuple(LEARNED) + tuple(TEXT)
FRACTIONS = (16, 4, 1)              # BOOT budgets: the recipe's steps divided by these, a run each
KD_PAIRS = ((1024, 8), (8192, 64))  # the baseline's (P pairs, teacher DDIM-k): a cheap one, a faithful one
# CPU budgets, caps on train_toy's defaults (the tables print the flags; a GPU runs the defaults). An exact
# finite-set teacher (checkerboard, spiral: 2,048 points; digits: 1,797 images) costs a float64 batch x points
# softmax per call, about 90 ms at batch 1024 on one core: these get fewer steps, smaller batches, fewer noises.
CPU_EVAL = {"--eval-samples": 1024, "--reference-steps": 1024}
CPU_CAPS = {"mixture": CPU_EVAL, "unequal": CPU_EVAL,
            "checkerboard": CPU_EVAL | {"--steps": 2000, "--batch-size": 256, "--eval-samples": 512},
            "spiral": CPU_EVAL | {"--steps": 2000, "--batch-size": 256, "--eval-samples": 512},
            "digits": CPU_EVAL | {"--eval-samples": 512},
            # A network teacher: a call costs what it costs (a tenth of a second a batch here); train_toy sizes its
            # evaluation to the device (256 noises, DDIM-64 on the CPU).
            "mnist16": {"--steps": 600}, "mnist16-flow": {"--steps": 600}}
LEARNED_KD = ((1024, 8), (2048, 32))  # learned teachers: a call costs what it costs (2,048 DDIM-32: 2 CPU minutes)
QUICK = ["--steps", "24", "--batch-size", "64", "--eval-samples", "64", "--reference-steps", "256"]
QUICK_KD = ((64, 2), (128, 4))
QUICK_LEARNED = ["--steps", "16", "--batch-size", "8", "--eval-samples", "16", "--reference-steps", "8"]
QUICK_TEXT = ["--steps", "4", "--batch-size", "2", "--bootstrap-steps", "4", "--eval-samples", "20"]
TEXT_EVAL_SAMPLES = 500  # the judged evaluation of a text-to-image student: as many as the teacher's own figures
TARGETS = {"effective_nfe_2d": 16, "effective_nfe_digits": 8, "effective_nfe_learned": 8, "step_over_floor": 1.1,
           "speedup_over_k": 0.9, "text_fd_over_ddim50": 1.5, "text_minutes": 60}
TEXT_W, TEXT_K = "3", "8"  # text-to-image goals at w = 3: accuracy >= the teacher's DDIM-8, FD <= 1.5 x its DDIM-50
CALLS = ("per-sample teacher evaluations (one teacher call on one sample): a BOOT step costs "
         "batch x jump x order (+ batch with --boundary loss), a KD baseline P x k")


def say(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def parse_args(argv):
    p = runtime.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the pieces in under a minute, not the figures")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--teachers", nargs="+", choices=TEACHERS, default=list(EXACT), metavar="NAME",
                   help=f"teachers to measure, any of: {' '.join(TEACHERS)} (default: the exact ones, "
                        f"{' '.join(EXACT)})")
    p.add_argument("--json", default=str(RESULTS / "exact.json"),
                   help="where the figures go; the markdown goes beside it (.md), the pictures into NAME-figures/")
    p.add_argument("--seed", type=int, default=0, help="seed of every run: initial weights, noises, pairs")
    p.add_argument("--render", metavar="JSON", help="measure nothing: write the markdown of figures already measured "
                                                    "(a --json file) beside them, with today's report")
    return p.parse_args(argv)


def recipe_flags(name, opts, device) -> list:
    """train_toy flags for one teacher: its defaults, within the budget of this kind of run."""
    source = ["--teacher", str(ROOT / LEARNED[name])] if name in LEARNED else ["--data", name]
    flags = source + ["--seed", str(opts.seed), "--device", str(device)]
    if opts.quick:
        return flags + (QUICK_LEARNED if name in LEARNED else QUICK)
    if device.type != "cpu":
        return flags
    defaults = vars(toy.parse_args(flags + ["--out", "unused"]))
    for flag, cap in CPU_CAPS[name].items():
        if defaults[flag[2:].replace("-", "_")] > cap:
            flags += [flag, str(cap)]
    return flags


def boot_teacher_calls(args) -> int:
    """bootstrap_target steps the whole batch `jump` times (masking samples already at s), `order` calls a step;
    the corrector (a pixel teacher's default) calls the teacher once per sample of its batch, from its start."""
    corrector = args.corrector_batch * max(0, args.steps - args.corrector_start) if args.corrector_weight else 0
    return args.steps * args.batch_size * (args.jump * args.order + (args.boundary == "loss")) + corrector


# ----------------------------------------------------------------------------------------------------
# 1 and 2: fidelity of BOOT at a few budgets and of the KD baseline, on the same fixed noise.


def fidelity(name, opts, d, tmp):
    """BOOT at a few budgets, KD at a few (P, k), all scored on the noise and reference of the full BOOT run;
    each with the seconds it took here (KD: its pairs and its training)."""
    flags = recipe_flags(name, opts, d.device)
    full = toy.parse_args(flags + ["--out", f"{tmp}/unused"])
    boot_rows, kd_rows = [], []
    for steps in sorted({max(1, full.steps // f) for f in FRACTIONS}, reverse=True):  # full budget first: the reference
        say(f"{name}: BOOT, {steps} steps")
        args = toy.parse_args(flags + ["--steps", str(steps), "--out", f"{tmp}/{name}-boot-{steps}"])
        teacher, schedule, student, shape, exact_teacher = toy.build(args, d.device)
        start = time.perf_counter()
        student, _ = toy.train(args, d, teacher, schedule, student, shape)
        seconds = time.perf_counter() - start
        if steps == full.steps:
            say(f"{name}: evaluating (converged reference, DDIM-k curve)")
            judge = evaluation.find_judge(args, shape, d.device) if exact_teacher is None else None
            final, arrays = evaluation.evaluate(args, teacher, schedule, student, shape, d.device, exact_teacher, judge)
            noise, reference = arrays["noise"].to(d.device), arrays["teacher"].to(d.device)
            curve = {int(k): v for k, v in final["teacher_ddim_rmse"].items()}
            per_pixel = shape != (2,)  # as evaluate: images per pixel, 2-D points per sample
        boot_rows.append(dict(steps=steps, teacher_calls=boot_teacher_calls(args), seconds=seconds,
                              **evaluation.score(student, noise, reference, curve, per_pixel, judge)))
    gen = torch.Generator().manual_seed(opts.seed + 100)  # pair noises apart from the evaluation's (seed + 1)
    for pairs, k in QUICK_KD if opts.quick else LEARNED_KD if name in LEARNED else KD_PAIRS:
        say(f"{name}: KD, {pairs} pairs of teacher DDIM-{k}")
        start = time.perf_counter()
        x = torch.randn(pairs, *shape, generator=gen).to(d.device)
        target = metrics.batched(lambda e: boot.ddim_sample(teacher, e, schedule=schedule, steps=k), x,
                                 1024 if exact_teacher is not None else evaluation.eval_sizes(full, d.device, schedule)[2])
        student = toy.build(full, d.device)[2]  # seeded by --seed: the initial weights of BOOT's student
        student = kd.train(full, d, student, x, target, f"{tmp}/{name}-kd-{pairs}x{k}")
        kd_rows.append(dict(pairs=pairs, k=k, teacher_calls=pairs * k, seconds=time.perf_counter() - start,
                            **evaluation.score(student, noise, reference, curve, per_pixel, judge)))
    shown = lambda value: value.replace(str(ROOT) + os.sep, "") if isinstance(value, str) else value  # as run from ROOT
    return dict(recipe={k: shown(v) for k, v in vars(full).items()} | {"out": None}, flags=list(map(shown, flags)),
                final=final, boot=boot_rows, kd=kd_rows,
                verdict=verdict(boot_rows, kd_rows))


def verdict(boot_rows, kd_rows) -> dict:
    """Does BOOT reach the baseline's best RMSE with fewer teacher calls than the baseline spent on it?"""
    best = min(kd_rows, key=lambda r: r["rmse"])
    first = min((r for r in boot_rows if r["rmse"] <= best["rmse"]), key=lambda r: r["teacher_calls"], default=None)
    fewer = first is not None and first["teacher_calls"] < best["teacher_calls"]
    kd = f"KD's best RMSE {best['rmse']:.4f} ({best['teacher_calls']:,} teacher calls)"
    top = min(boot_rows, key=lambda r: r["rmse"])
    if first is None:
        text = f"no: BOOT's best RMSE {top['rmse']:.4f} ({top['teacher_calls']:,} calls) does not reach {kd}"
    else:
        ratio = first["teacher_calls"] / best["teacher_calls"]
        text = f"{'yes' if fewer else 'no'}: BOOT reaches {kd} with {first['teacher_calls']:,} calls ({ratio:.3g}x)"
    # The other way round: what the baseline spends to match BOOT's best.
    kd_match = min((r for r in kd_rows if r["rmse"] <= top["rmse"]), key=lambda r: r["teacher_calls"], default=None)
    if kd_match is not None:
        text += f"; KD matches BOOT's best RMSE {top['rmse']:.4f} with {kd_match['teacher_calls']:,} calls"
    return dict(boot_fewer_calls=fewer, text=text)


# ----------------------------------------------------------------------------------------------------
# 3: speed.


def interleaved(fns: dict, device, reps: int) -> dict:
    """Median ms of each fn over `reps` rounds that run them in turn, after a warm-up round: on a shared
    machine a change of load then weighs on every fn alike, and their ratios hold."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in fns}
    for round_ in range(reps + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def sampling(flags, opts, d) -> dict:
    """Samples/s of one student call and of DDIM-k with a teacher network of the same architecture, same batch."""
    args = toy.parse_args(flags + ["--out", "unused"])
    _, schedule, student, shape, _ = toy.build(args, d.device)
    twin = boot.denoiser(copy.deepcopy(student), schedule, prediction="sample")
    batch = 64 if opts.quick else 8192 if d.device.type == "cuda" else 1024
    eps = torch.randn(batch, *shape, device=d.device)
    fns = {k: (lambda k=k: boot.ddim_sample(twin, eps, schedule=schedule, steps=k)) for k in metrics.DDIM_KS}
    ms = interleaved({"student": lambda: boot.sample_student(student, eps), **fns}, d.device, 1 if opts.quick else 5)
    ddim = speedups(ms, batch)
    return dict(student=f"MLP width {args.width}, depth {args.depth}, {math.prod(shape)} dims", batch=batch,
                student_samples_per_s=1000 * batch / ms["student"], ddim=ddim)


def speedups(ms: dict, batch: int) -> dict:
    """From ms a call of batch samples ("student", and each DDIM-k by k): each k's samples/s, its time over the
    student's, and that per step of k (1: the student costs what one teacher step of its size costs)."""
    return {k: dict(samples_per_s=1000 * batch / ms[k], speedup=ms[k] / ms["student"],
                    speedup_over_k=ms[k] / ms["student"] / k) for k in ms if k != "student"}


def floor_figures(rounds: list) -> dict:
    """Rounds of a step's parts and its whole (ms): the medians of each, the floor (the sum of the parts' medians),
    each round's whole over its own parts, and their median (the figure: both halves of a round saw one load)."""
    parts = ("teacher_ms", "student_call_ms", "student_train_ms")
    ratios = [r["step_ms"] / sum(r[key] for key in parts) for r in rounds]
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    return medians | dict(floor_ms=sum(medians[key] for key in parts), step_over_floor=statistics.median(ratios),
                          step_over_floor_rounds=ratios)


def in_fresh_process(fn, *args):
    """fn(*args) in a new Python process, as a user's run starts, not after minutes of this one's allocations."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn, initializer=runtime.keep_freed_memory) as pool:
        return pool.submit(fn, *args).result()


def step_cost(flags, opts, d, tmp) -> dict:
    """One BOOT step as toy.train runs it (timed from its own log) against its parts, timed apart: the bootstrap's
    step, the corrector off (a pixel teacher's default: it costs about 0.7 of a step more, docs/recipes.md)."""
    flags = flags + ["--corrector-weight", "0"]
    args = toy.parse_args(flags + ["--out", "unused"])
    teacher, schedule, student, shape, _ = toy.build(args, d.device)
    grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing).to(d.device)
    config = boot.BootConfig(weighting=args.weighting, boundary=args.boundary, order=args.order, jump=args.jump)
    eps = torch.randn(args.batch_size, *shape, device=d.device)
    k = torch.randint(1, args.bootstrap_steps + 1, (args.batch_size,), device=d.device)
    t, s = grid[k].float(), grid[(k - args.jump).clamp(min=0)].float()
    captured = []  # the teacher's inputs in one step of the recipe: its calls are then timed on exactly these
    recorder = lambda x, t_, cond=None: captured.append((x.clone(), t_.clone())) or teacher(x, t_, cond)
    with torch.no_grad():
        boot.boot_loss(student, recorder, eps, schedule=schedule, grid=grid, config=config, k=k)
    rows = 2 if args.boundary == "loss" else 1  # the loss boundary runs the student on both halves at once
    optimizer, _, ema = toy.optimization(args, student)
    both = lambda x: x.repeat(rows, *[1] * (x.dim() - 1))  # the batch, once or twice
    target = torch.randn_like(both(eps))

    def teacher_calls():
        for x, t_ in captured:
            teacher(x, t_)

    def student_train():  # as runtime.Trainer: forward, backward, clip, Adam, and the EMA's update when on
        loss = (student(both(eps), s.repeat(rows)) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(student)

    parts = {"teacher_ms": teacher_calls, "student_call_ms": torch.no_grad()(lambda: student(eps, t)),
             "student_train_ms": student_train}

    def whole(steps):  # ms a step of toy.train, from its log: records' steps_per_s leave setup and warm-up out
        # A folder of its own: the log is appended to, and another run's records would skew the figure.
        a = toy.parse_args(flags + ["--steps", str(100 + steps), "--out", tempfile.mkdtemp(prefix="step-", dir=tmp)])
        toy.train(a, d, teacher, schedule, toy.build(a, d.device)[2], shape)
        lines = (Path(a.out) / "log.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if "steps_per_s" in r]  # every 50 steps and at the end
        first, last = records[0], records[-1]
        return 1000 * (last["step"] / last["steps_per_s"] - first["step"] / first["steps_per_s"]) / (last["step"] - first["step"])

    # Rounds of parts, then the whole step right after them, each for about 1.5 s, so that both see the same
    # load; the figure is the median of the rounds' ratios (a shared VM's throughput swings by 25% from one
    # second to the next).
    estimate = sum(interleaved(parts, d.device, 2).values())
    window = 200 if opts.quick else 1500  # ms
    fill = round(window / estimate)  # parts rounds, and whole steps, in a window
    rounds = []
    for _ in range(1 if opts.quick else 5):
        rounds.append(interleaved(parts, d.device, max(2, fill)))
        rounds[-1]["step_ms"] = whole(max(20, min(2000, fill)))
    return floor_figures(rounds) | dict(teacher_calls_per_step=len(captured), batch=args.batch_size)


def rises(accuracies: list, samples: int) -> bool:
    """Accuracy that rises with w: higher at the largest w than at the smallest, never down by more than one sample."""
    return accuracies[-1] > accuracies[0] and all(b >= a - 1 / samples for a, b in zip(accuracies, accuracies[1:]))


def script(name: str, argv: list):
    """python ROOT/name argv in a process of its own (scripts are run, never imported); RunError where it fails."""
    done = subprocess.run([sys.executable, str(ROOT / name), *argv])
    if done.returncode:
        raise runtime.RunError(f"{name} {shlex.join(argv)} failed (exit status {done.returncode}); its message is above")


def text_to_image(name, opts, d, tmp, pictures: Path) -> dict:
    """train_sd.py with its defaults on a committed text-to-image teacher, as its README runs it (--guidance-range
    1,5), timed; then its judged evaluation (train_sd.py --evaluate, TEXT_EVAL_SAMPLES samples): prompted-digit
    accuracy and FD of the student's one call and the teacher's DDIM-k per w, and the goals. Pictures go to
    pictures/NAME-judged-wW.png."""
    folder = ROOT / TEXT[name]
    prompts, run = ["--prompts", str(folder / "prompts.txt")], Path(tmp) / name
    flags = ["--guidance-range", "1,5", "--seed", str(opts.seed), "--device", str(d.device)]
    flags += QUICK_TEXT[:-2] if opts.quick else []
    say(f"{name}: train_sd.py --teacher {TEXT[name]} {shlex.join(flags)}")
    start = time.perf_counter()  # a process of its own, as a user runs it: its start-up (seconds) counts
    script("train_sd.py", prompts + ["--teacher", str(folder)] + flags + ["--out", str(run), "--judge", "none"])
    seconds = time.perf_counter() - start
    samples = QUICK_TEXT[-1] if opts.quick else str(TEXT_EVAL_SAMPLES)
    say(f"{name}: judged evaluation, {samples} samples")
    script("train_sd.py", prompts + ["--evaluate", str(run), "--eval-samples", samples, "--device", str(d.device)])
    meta = json.loads((run / "boot_sd.json").read_text())
    pictures.mkdir(parents=True, exist_ok=True)
    for w, row in meta["judged"]["guidance"].items():
        row["picture"] = f"{pictures.name}/{name}-judged-w{w}.png"  # beside the markdown, which links it
        shutil.copyfile(run / "figures" / f"judged-w{w}.png", pictures.parent / row["picture"])
    return dict(flags=["--teacher", TEXT[name], *flags], recipe={k: meta[k] for k in ("steps", "batch_size", "lr", "bootstrap_steps", "spacing",
                                                         "order", "ema", "dtype", "guidance_range")},
                judged=meta["judged"], goals=text_goals(meta["judged"], seconds))


def text_goals(judged: dict, seconds: float) -> dict:
    """The text-to-image goals of a judged run: within TARGETS' minutes, accuracy rising with w, and at w = TEXT_W
    (where judged) accuracy at least the teacher's DDIM-TEXT_K and FD at most 1.5 times its DDIM-50."""
    g, n = judged["guidance"], judged["samples"]
    goals = {"seconds": seconds, "minutes_ok": seconds / 60 <= TARGETS["text_minutes"],
             "student_rises": rises([row["student"]["accuracy"] for row in g.values()], n)}
    at = g.get(TEXT_W)
    if at is not None:
        goals.update(accuracy_ok=at["student"]["accuracy"] >= at["teacher_ddim"][TEXT_K]["accuracy"],
                     fd_ok=at["student"]["fd"] <= TARGETS["text_fd_over_ddim50"] * at["teacher_ddim"]["50"]["fd"])
    return goals


# ----------------------------------------------------------------------------------------------------
# Report.


def mark(value, target, fmt="{:.2f}", higher=True) -> str:
    ok = value >= target if higher else value <= target
    return fmt.format(value) + ("" if ok else f" **{'below' if higher else 'above'} target {target}**")


def table(head: str, rows) -> list:
    """A markdown table: the head's columns split on '|', one list of cells a row."""
    return [f"| {head} |", "|" + "---|" * (head.count("|") + 1)] + ["| " + " | ".join(row) + " |" for row in rows]


def learned_section(fid) -> list:
    """Learned teachers: the one-call student against the teacher's own DDIM-k, by the judge and the clock."""
    if not fid:
        return []
    out = ["\n### Learned teachers (networks that teachers/train_teacher.py trained): judged, and timed as they run\n",
           "FD: the judge's Frechet distance to its held-out digits; class shares: the judge's classes (uniform: 0.100). "
           "Samples/s: one student call and the teacher's own DDIM-k, the same batch on this machine. A flow teacher's "
           "DDIM-k is the Euler-k of its ODE.\n"]
    rows = []
    for name, f in fid.items():
        a, m = f["recipe"], f["final"]
        fd, shares, speed = m["judge"]["fd"], m["judge"]["class_share"], m["samples_per_s"]
        samplers = [("student, 1 call", "student", m["student_rmse"], mark(m["effective_nfe"], TARGETS["effective_nfe_learned"], "{:.1f}"))]
        samplers += [(f"teacher DDIM-{k}", f"teacher_ddim_{k}", v, "") for k, v in m["teacher_ddim_rmse"].items()]
        for label, key, err, nfe in samplers:
            rows.append([name if key == "student" else "", f"{a['steps']} x {a['batch_size']}, N {a['bootstrap_steps']}"
                         if key == "student" else "", label, f"{err:.4f}", nfe, f"{fd[key]:.1f}",
                         f"{min(shares[key]):.3f} - {max(shares[key]):.3f}", f"{speed[key]:,.0f}"])
        rows.append(["", "", m["reference"], "0", "", f"{fd['reference']:.1f}",
                     f"{min(shares['reference']):.3f} - {max(shares['reference']):.3f}", ""])
    return out + table("teacher | steps x batch, N | sampler | RMSE | effective NFE | FD | class shares, min - max | "
                       "samples/s", rows)


def text_section(text) -> list:
    """Text-to-image teachers: the guided student against the teacher's guided DDIM-k, per w, by the judge."""
    out = []
    for name, t in text.items():
        g, goals, r = t["judged"]["guidance"], t["goals"], t["recipe"]
        ws, n = list(g), t["judged"]["samples"]
        recipe = (f"{r['steps']:,} steps x {r['batch_size']}, lr {r['lr']:g}, N {r['bootstrap_steps']} ({r['spacing']}), "
                  f"order {r['order']}, EMA target {r['ema']}, {r['dtype']}")
        out += [f"\n## Text-to-image: train_sd.py on {name} ({TEXT[name]}), judged\n",
                f"`python train_sd.py {shlex.join(t['flags'])}` with its defaults: {recipe}; "
                f"{goals['seconds'] / 60:.1f} minutes of distillation. Each cell: the judge's prompted-digit accuracy / "
                f"FD to the held-out digits, {n} samples from the same noise, prompts in turn.\n"]
        samplers = [("student, 1 call", lambda w: g[w]["student"])]
        samplers += [(f"teacher DDIM-{k}", lambda w, k=k: g[w]["teacher_ddim"][k]) for k in g[ws[0]]["teacher_ddim"]]
        out += table("sampler | " + " | ".join(f"w = {w}" for w in ws),
                     [[label] + [f"{cell(w)['accuracy']:.3f} / {cell(w)['fd']:.1f}" for w in ws] for label, cell in samplers])
        out.append("")
        if TEXT_W in g:
            at = g[TEXT_W]
            fd_cap = TARGETS["text_fd_over_ddim50"] * at["teacher_ddim"]["50"]["fd"]
            out += [f"- w = {TEXT_W}, accuracy: student {at['student']['accuracy']:.3f}, teacher DDIM-{TEXT_K} "
                    f"{at['teacher_ddim'][TEXT_K]['accuracy']:.3f}: {'met' if goals['accuracy_ok'] else '**missed**'}",
                    f"- w = {TEXT_W}, FD: student {at['student']['fd']:.1f}, at most {TARGETS['text_fd_over_ddim50']} x the "
                    f"teacher's DDIM-50 {at['teacher_ddim']['50']['fd']:.1f} = {fd_cap:.1f}: "
                    f"{'met' if goals['fd_ok'] else '**missed**'}"]
        accs = lambda who: " -> ".join(f"{(g[w]['student'] if who == 'student' else g[w]['teacher_ddim']['50'])['accuracy']:.3f}"
                                       for w in ws)
        out += [f"- accuracy rises with w: student {accs('student')}, teacher DDIM-50 {accs('teacher')}: "
                f"{'met' if goals['student_rises'] else '**missed**'}",
                f"- distillation within {TARGETS['text_minutes']} minutes: {goals['seconds'] / 60:.1f}: "
                f"{'met' if goals['minutes_ok'] else '**missed**'}",
                "- pictures (rows: teacher DDIM-1, 4, 16, 50, then the student; a column per digit): " +
                ", ".join(f"[w = {w}]({g[w]['picture']})" for w in ws)]
    return out


def report(r) -> str:
    out = [f"# BOOT benchmark{' (QUICK smoke run: budgets far too small for meaningful figures)' if r['quick'] else ''}\n",
           f"- machine: {r['machine']}; torch {r['torch']}; {r['date']}; {r['wall_s'] / 60:.1f} minutes",
           f"- command: `{r['command']}`"]
    out += toy_sections(r) if r["fidelity"] else []
    out += text_section(r.get("text", {}))  # results written before the text-to-image section have none
    out.append("\n## Stable-Diffusion-1.5 shape (random weights)\n")
    out += [f"{sd_step.table(s)}\n\nwhole / sum: {mark(s['ratio'], TARGETS['step_over_floor'], '{:.3f}', higher=False)}\n"
            for s in r["sd"]] if isinstance(r["sd"], list) else [r["sd"]]
    return "\n".join(out)


def toy_sections(r) -> list:
    """train_toy.py's teachers: fidelity, any-t sampling, BOOT against KD, sampling speed, the training step."""
    fid = r["fidelity"]
    out = [f"- teacher calls: {CALLS}",
           "- recipe: train_toy.py's defaults, with these flags: " +
           "; ".join(f"{n}: `{' '.join(f['flags'][2:])}`" for n, f in fid.items()),
           "\n## Fidelity of the one-call student (RMSE to the teacher's converged DDIM, same noise)\n",
           "Effective NFE: the k at which the teacher's own DDIM-k curve reaches the student's RMSE "
           "(log-interpolated).\n"]
    rows, exact_fid = [], {n: f for n, f in fid.items() if n not in LEARNED}
    for name, f in exact_fid.items():
        a, m, share = f["recipe"], f["final"], f["final"]["mode_share"]
        target = TARGETS["effective_nfe_digits" if name == "digits" else "effective_nfe_2d"]
        rows.append([name, f"{a['steps']} x {a['batch_size']}, {a['bootstrap_steps']}, {a['jump']}, {a['order']}",
                     f"{m['student_rmse']:.4f}", f"{m['teacher_ddim_rmse']['8']:.4f} / {m['teacher_ddim_rmse']['16']:.4f}",
                     mark(m["effective_nfe"], target, "{:.1f}"),
                     f"{min(s / p for s, p in zip(share['student'], share['data']) if p > 0):.2f}"])
    if rows:
        out += ["Exact teachers. Mode: the label of the nearest mixture mean or training point.\n"] + table("teacher | steps x batch, N, jump, order | student RMSE | DDIM-8 / DDIM-16 RMSE | effective NFE | "
                     "least-covered mode (share / data share)", rows)
    out += learned_section({n: f for n, f in fid.items() if n in LEARNED})
    if "digits" in fid:
        shares = {who: " ".join(f"{v:.2f}" for v in fid["digits"]["final"]["mode_share"][who]) for who in ("student", "data")}
        out.append(f"\ndigits, share of each class 0-9 among the labels of the training images nearest to the samples: "
                   f"student {shares['student']}; data {shares['data']}")
        same = fid["digits"]["final"]["same_point"]
        out.append(f"\ndigits, share of samples nearest the very training image the converged teacher ends on, from the same "
                   f"noise: student {same['student']:.2f}, teacher DDIM-8 {same['teacher_ddim_8']:.2f}")
    out += ["\n## Any-t sampling: one student call to the grid time t_j, then j teacher steps (boot.sample_any_t)\n",
            "Calls in all, as the run counted them, against RMSE to the converged teacher, the one-call student first; "
            "the teacher steps are the training's own, so a perfect student's RMSE is the grid's fixed point at every j. "
            "Heun: 2 calls a step; until 2026-12-01 also on the last step (1 + 2j), whose second answer was unused; "
            "since then 1 there (2j).\n"]
    out += table("teacher | calls: RMSE (effective NFE)", [
        [name, ", ".join([f"1: {f['final']['student_rmse']:.4f} ({f['final']['effective_nfe']:.1f})"] +
                         [f"{a['calls']}: {a['rmse']:.4f} ({a['effective_nfe']:.1f})" for a in f["final"]["any_t"]])]
        for name, f in fid.items()])
    out += ["\n## BOOT against knowledge distillation (Luhman & Luhman 2021): fidelity per teacher call\n",
            "KD: the same student, optimizer, schedule, steps and batch as BOOT's largest budget, regressed at "
            "t = 0 on P offline pairs of (noise, teacher DDIM-k from it). Seconds on this machine: BOOT's training; "
            "KD's pairs and training. FD: learned teachers' judge, to its held-out digits.\n"]
    cells = lambda b: [f"{b['teacher_calls']:,}", f"{b['seconds']:.0f}" if "seconds" in b else "-", f"{b['rmse']:.4f}", f"{b['effective_nfe']:.1f}",
                       f"{b['fd']:.1f}" if "fd" in b else "-"]
    rows = []
    for name, f in fid.items():
        rows += [[name, "BOOT", f"{b['steps']:,} steps"] + cells(b) for b in f["boot"]]
        rows += [[name, "KD", f"{b['pairs']:,} pairs of DDIM-{b['k']}"] + cells(b) for b in f["kd"]]
    out += table("teacher | method | budget | teacher calls | seconds | RMSE | effective NFE | FD", rows)
    out += [""] + [f"- {name}: BOOT reaches KD's best with fewer teacher calls? {f['verdict']['text']}" for name, f in fid.items()]
    if r["sampling"]:  # exact teachers (learned ones: their real DDIM-k, in their own table)
        out += ["\n## Sampling: one student call against DDIM-k of a teacher network of the student's architecture\n",
                "An exact teacher is a formula, not a network: its own DDIM-k speeds are in the JSON "
                "(fidelity.NAME.final.samples_per_s). Medians of interleaved rounds.\n"]
        out += table("student (batch) | k | DDIM-k samples/s | student samples/s | speed-up | speed-up / k", [
            [f"{label}: {sp['student']} ({sp['batch']})", str(k), f"{v['samples_per_s']:,.0f}",
             f"{sp['student_samples_per_s']:,.0f}", f"{v['speedup']:.1f}", mark(v["speedup_over_k"], TARGETS["speedup_over_k"])]
            for label, sp in r["sampling"].items() for k, v in sp["ddim"].items()])
    out += ["\n## Training step against its floor (teacher calls + student call + student forward/backward/Adam)\n",
            "The parts are timed apart (medians of interleaved rounds; the teacher on the inputs of a real step); the "
            "whole step is toy.train's own, read from its log after its first 50 steps, after each round of parts; "
            "each teacher in a fresh process, as a user's run. The ratio is the median of the rounds' own ratios.\n"]
    out += table("teacher (batch, teacher calls) | teacher ms | student call ms | student train ms | floor ms | "
                 "whole step ms | whole / floor (median of rounds) | rounds' range", [
        [f"{name} ({c['batch']}, {c['teacher_calls_per_step']})"] +
        [f"{c[key]:.2f}" for key in ("teacher_ms", "student_call_ms", "student_train_ms", "floor_ms", "step_ms")] +
        [mark(c["step_over_floor"], TARGETS["step_over_floor"], higher=False),
         f"{min(c['step_over_floor_rounds']):.2f} - {max(c['step_over_floor_rounds']):.2f}"] for name, c in r["step"].items()])
    return out


def render(path: Path) -> str:
    """--render: path's figures as markdown, into path with .md."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise runtime.UsageError(f"--render {path}: not a readable JSON file of this benchmark ({e})") from None
    try:
        text = report(r)
    except (KeyError, TypeError) as e:
        raise runtime.UsageError(f"--render {path}: not figures of this benchmark (no {e})") from None
    path.with_suffix(".md").write_text(text + "\n")
    say(f"wrote {path.with_suffix('.md')}")
    return text


@runtime.cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(argv)
    if opts.render:
        return render(Path(opts.render))
    path = Path(opts.json)
    if path.is_dir() or path.suffix == ".md":
        raise runtime.UsageError(f"--json {path}: name a file ending .json (the markdown goes beside it, as .md)")
    path.parent.mkdir(parents=True, exist_ok=True)  # before the run, not after it
    d = runtime.setup(opts.device)
    start = time.perf_counter()
    r = dict(quick=opts.quick, machine=runtime.machine_name(d.device), torch=torch.__version__, targets=TARGETS, teacher_calls=CALLS,
             date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
             command=shlex.join(["python", "bench/benchmark.py", *argv]), fidelity={}, step={}, sampling={}, text={})
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in [n for n in opts.teachers if n in TEXT]:
            r["text"][name] = text_to_image(name, opts, d, tmp, path.with_name(path.stem + "-figures"))
        for name in [n for n in opts.teachers if n not in TEXT]:
            r["fidelity"][name] = fidelity(name, opts, d, tmp)
            say(f"{name}: timing the training step")
            r["step"][name] = in_fresh_process(step_cost, recipe_flags(name, opts, d.device), opts, d, tmp)
        groups = {"2-D": [n for n in opts.teachers if n not in ("digits", *LEARNED, *TEXT)],  # learned: in train_toy's figures
                  "digits": [n for n in opts.teachers if n == "digits"]}
        for label, names in groups.items():  # one student architecture each
            if names:
                say(f"{label}: timing sampling")
                r["sampling"][label] = sampling(recipe_flags(names[0], opts, d.device), opts, d)
    if d.device.type == "cuda":
        say("Stable-Diffusion-1.5 shape")
        r["sd"] = []
        for checkpointing in (True, False):
            r["sd"].append(sd_step.run(d.device, batch=8, tiny=opts.quick, checkpointing=checkpointing))
            gc.collect()  # the next run's peak memory must not count this one's weights
            torch.cuda.empty_cache()
    else:
        r["sd"] = "skipped on the CPU: the SD-1.5-shaped step is a GPU figure (run with --device cuda)."
    r["wall_s"] = time.perf_counter() - start
    text = report(r)
    print(text)
    path.write_text(json.dumps(r, indent=1, default=str))
    path.with_suffix(".md").write_text(text + "\n")
    say(f"wrote {path} and {path.with_suffix('.md')}")
    return r


if __name__ == "__main__":
    main()
