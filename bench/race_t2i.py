"""bench/race_t2i.py: bench/race.py's text-to-image race, BOOT against knowledge distillation at equal budgets of
seconds on a text-to-image digit teacher (teachers/mnist-t2i), where data-free should win: KD must make a pair (the
teacher's guided DDIM-k) for every (prompt, w) it trains on, BOOT draws fresh prompts and w every step.

    python bench/race.py --teacher teachers/mnist-t2i --budgets 2 5 10 --json bench/results/race-t2i.json
    python bench/race.py --teacher teachers/mnist-t2i --quick --json /tmp/race-t2i.json    # the pieces, in ~2 minutes

race.py runs it when --teacher is a diffusers folder with a text encoder. Each budget B is wall-clock seconds, both
methods in turn, on the same student (sd.make_student: the teacher's UNet plus a zero-initialised guidance input),
with train_sd's lr, batch and loss of one w range, [W_LO, W_HI]:
- BOOT: train_sd.py --guidance-range 1,5 with its defaults, as a user runs it (a process of its own, start-up
  counted: its --time-limit, the minutes left at its launch, counts from its first line, before its imports): its
  learning rate is constant, so the limit ends it.
- KD: in this process, the first PAIR_SHARE of B makes pairs (noise, a prompt of the file, w ~ U[W_LO, W_HI], the
  teacher's guided DDIM-k from them), k by race.py's rule (racing.kd_k); then AdamW regressing the student's one call
  at t = 0 and that w on them (constant learning rate), no step after B.
- --variant: BOOT with more train_sd flags; --kd-variant: KD with the corrector's flags as train_sd takes them
  (sd.add_corrector_flags), its term added to the regression (DMD's own form), the real score the guided teacher at
  each corrector sample's w.
Both are judged alike (judging.judge_guided): the same EVAL noises (judging.JUDGE_SEED) and prompts in turn, at
w = 1, 2, 3, 5, by prompted-digit accuracy and FD to the held-out digits; the teacher's guided DDIM-8 and DDIM-50 on
them are drawn once. Teacher calls are rows the teacher evaluates (a guided call: 2, conditional and null), counted
as made (racing.Counting): KD's here, BOOT's by train_sd.py (boot_sd.json's teacher_rows)."""
import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import boot
from bootkit import digits, judging, pictures, runtime, sd
from bootkit.racing import PAIR_SHARE, STEP_CAP, Counting, busy_line, kd_k, last_step

ROOT = Path(__file__).resolve().parents[1]
W_LO, W_HI = 1.0, 5.0  # the guidance range both students learn (train_sd --guidance-range 1,5)
WS = digits.FIGURE_WS  # judged at w = 1, 2, 3, 5
W = "3"                # who wins is read at this w
TEACHER_KS = (8, 50)   # the teacher's guided DDIM-k rows of the table
BATCH = 8              # train_sd's default --batch-size, both methods
LR = 3e-4              # train_sd's default --lr for a UNet under 100 M parameters (train_sd.LR_SMALL; tested alike)
PAIR_BATCH = 64        # KD's pairs are made this many at a time (the teacher's throughput, as a user batches them)
EVAL = 500             # judged samples per w: as the benchmark's (bench/benchmark.py TEXT_EVAL_SAMPLES)
QUICK = dict(budgets=[0.25, 0.5], eval=20, batch=2, pair_batch=8)


def say(*args):
    print("race:", *args, file=sys.stderr, flush=True)


def is_text_teacher(folder) -> bool:
    """A diffusers pipeline folder with a text encoder (a pixel teacher such as teachers/mnist16 has none)."""
    index = Path(folder) / "model_index.json"
    try:
        return "text_encoder" in json.loads(index.read_text())
    except (OSError, ValueError):
        return False


def boot_flags(opts, device, variant=()) -> list:
    """train_sd.py's flags of the race's BOOT (and of a variant: more train_sd flags)."""
    return ["--teacher", opts.teacher, "--prompts", str(Path(opts.teacher) / "prompts.txt"), "--guidance-range",
            f"{W_LO:g},{W_HI:g}", "--judge", "none", "--seed", str(opts.seed), "--device", str(device),
            "--batch-size", str(opts.batch), *variant]


def check_variants(opts, device):
    """Each variant's flags, tried now by train_sd.py itself (one step, its own refusals), not when its turn comes
    after minutes of other runs: a UsageError naming the variant and train_sd's message."""
    for name, variant in opts.variants.items():
        with tempfile.TemporaryDirectory(prefix="race-t2i-check-") as tmp:
            done = subprocess.run([sys.executable, str(ROOT / "train_sd.py"), *boot_flags(opts, device, variant),
                                   "--steps", "1", "--validate-every", "1000", "--out", str(Path(tmp) / "run")],
                                  capture_output=True, text=True)
        if done.returncode:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
            raise runtime.UsageError(f"--variant {name!r}: {why}")


def kd_variant_args(flags) -> argparse.Namespace:
    """A KD variant's flags, the corrector's as train_sd.py takes them, parsed and checked: a UsageError names the
    problem."""
    p = argparse.ArgumentParser(prog="--kd-variant", add_help=False, exit_on_error=False)
    sd.add_corrector_flags(p)
    try:
        args, unknown = p.parse_known_args(flags)
    except argparse.ArgumentError as e:
        raise runtime.UsageError(str(e)) from None
    if unknown:
        raise runtime.UsageError(f"{shlex.join(unknown)}: a text-to-image KD variant takes the corrector's flags only "
                                 "(--corrector-weight, --corrector-batch, --corrector-start, --fake-lr, --fake-updates)")
    sd.check_corrector_flags(args)
    return args


def boot_run(opts, budget, d, tmp, variant=()):
    """train_sd.py as a user runs it, stopped by --time-limit at the budget; variant: more train_sd flags."""
    start, busy = time.perf_counter(), runtime.cpu_seconds()
    flags = boot_flags(opts, d.device, variant)

    def train_sd(*extra):  # a process of its own, as a user runs it (scripts are run, never imported)
        if subprocess.run([sys.executable, str(ROOT / "train_sd.py"), *flags, *extra]).returncode:
            raise runtime.RunError(f"train_sd.py {shlex.join(flags + list(extra))} failed; its message is above")
    left = start + budget - time.perf_counter()  # train_sd's learning rate is constant: the limit ends the run
    train_sd("--steps", str(STEP_CAP), "--time-limit", f"{max(left, 0.06) / 60:.6g}", "--out", str(tmp / "run"))
    meta = json.loads((tmp / "run" / "boot_sd.json").read_text())
    done = last_step(tmp / "run")
    student = sd.load_student(tmp / "run", "bench/race.py", d.device)
    return student, dict(seconds=time.perf_counter() - start, busy=busy, steps_done=done, batch=meta["batch_size"],
                         order=meta["order"], lr=meta["lr"], teacher_calls=meta["teacher_rows"])


class Pairs:
    """KD's data set: noise, a prompt of the file, w ~ U[W_LO, W_HI], the teacher's guided DDIM-k from them."""

    def __init__(self, parts, teacher, prompts, encode, null, shape, seed, dtype, device):
        self.parts, self.teacher, self.prompts, self.encode, self.null = parts, teacher, prompts, encode, null
        self.shape, self.dtype, self.device = shape, dtype, device
        self.gen = torch.Generator().manual_seed(seed + 100)  # apart from the judged noise (judging.JUDGE_SEED)

    def batch(self, n: int, k: int):
        eps = sd.noise(self.gen, n, self.shape, self.device)
        which = torch.randint(len(self.prompts), (n,), generator=self.gen)
        w = (W_LO + (W_HI - W_LO) * torch.rand(n, generator=self.gen)).to(self.device)
        cond = self.encode(self.prompts.read(which.tolist()))
        guided = self.parts.teacher.finish(boot.guided(self.teacher, scale=w, null_cond=self.null))
        with sd.autocast(self.device, self.dtype):
            x0 = boot.ddim_sample(guided, eps, schedule=self.parts.teacher.schedule, steps=k, cond=cond)
        return eps, which.to(self.device), w, x0.float()

    def until(self, deadline: float, n: int, k: int):
        """Batches of n pairs until the deadline (a time.perf_counter()), at least one: (eps, prompt, w, x0)."""
        made = [self.batch(n, k)]
        while time.perf_counter() < deadline:
            made.append(self.batch(n, k))
        return [torch.cat(parts) for parts in zip(*made)]


def kd_train(student, pairs, data, *, steps, batch, seed, dtype, d, out, until=None, corrector=None):
    """AdamW at train_sd's lr, constant, clipped as train_sd: the student's one call at t = 0 and the pair's w,
    regressed on the teacher's sample (mean squared error) in runtime.Trainer's loop; corrector: an sd.Corrector whose
    term is added."""
    eps, which, w, x0 = data
    schedule, prediction = pairs.parts.teacher.schedule, pairs.parts.teacher.prediction
    trainer = runtime.Trainer(out=out, model=student, optimizer=torch.optim.AdamW(student.parameters(), lr=LR),
                              dist_info=d, config={}, ckpt_every=10 ** 9,
                              extras={"fake": (corrector.net, corrector.optimizer)} if corrector else None)

    def loss_fn(step):
        gen = runtime.step_generator(seed, d.rank, step, d.device)
        i = torch.randint(len(eps), (batch,), generator=gen, device=d.device)
        cond = pairs.encode(pairs.prompts.read(which[i].tolist()))
        with sd.autocast(d.device, dtype):
            y = sd.student_fn(student, schedule, prediction, w[i])(eps[i], torch.zeros(batch, device=d.device), cond)
        loss = (y.float() - x0[i]).pow(2).mean()
        corrected = corrector and corrector.loss(student, step, gen, dtype)
        if not corrected:
            return loss, {"loss": loss.detach()}
        return loss + corrected[0], {"loss": loss.detach()} | corrected[1] | {"terms": {"kd": loss, "corrector": corrected[0]}}

    trainer.fit(steps, loss_fn, desc=f"kd {Path(out).name}", until=until)
    return student.eval()


def kd_run(opts, budget, d, tmp, variant=()):
    """KD in this process; variant: a KD variant's flags (kd_variant_args), the corrector's."""
    start, busy = time.perf_counter(), runtime.cpu_seconds()
    fix = kd_variant_args(variant)
    dtype = sd.DTYPES[opts.dtype]
    parts = sd.load_teacher(opts.teacher, dtype, d.device)
    prompts = sd.read_prompts(Path(opts.teacher) / "prompts.txt")
    encode = sd.PromptEncoder(parts, d.device, warn=False, resolution=opts.shape[-1] * sd.vae_scale(parts.vae))
    counting = Counting(sd.teacher_fn(parts.unet, parts.teacher.schedule, parts.teacher.prediction))
    pairs = Pairs(parts, counting, prompts, encode, encode.null(), opts.shape, opts.seed, dtype, d.device)
    student = sd.make_student(opts.teacher).to(d.device)
    clock = time.perf_counter()
    pairs.batch(opts.pair_batch, 1)  # one guided call on a batch times a call (its rows counted, its pairs unused)
    probe_rows = counting.rows
    k = kd_k(PAIR_SHARE * budget - (time.perf_counter() - start), time.perf_counter() - clock, opts.pair_batch)
    data = pairs.until(start + PAIR_SHARE * budget, opts.pair_batch, k)
    pair_seconds = time.perf_counter() - start
    corrector = None
    if fix.corrector_weight:
        sd.corrector_defaults(fix, batch=opts.batch, lr=LR)
        corrector = sd.Corrector(fix, opts.teacher, d, teacher=counting, parts=parts, encode=encode, null=pairs.null,
                                 prompts=prompts, shape=opts.shape, w_range=(W_LO, W_HI))
    student = kd_train(student, pairs, data, steps=STEP_CAP, out=tmp / "run", until=start + budget, batch=opts.batch,
                       seed=opts.seed, dtype=dtype, d=d, corrector=corrector)
    return student, dict(seconds=time.perf_counter() - start, busy=busy, steps_done=last_step(tmp / "run"),
                         batch=opts.batch, lr=LR, k=k, pairs=len(data[0]), pair_seconds=pair_seconds,
                         probe_rows=probe_rows, teacher_calls=counting.rows)


def judged(opts, parts, judge, student=None, ks=()) -> dict:
    """{w: {accuracy, fd}} of a student, or {k: {w: ...}} of the teacher's DDIM-k: the same noise and prompts."""
    prompts = sd.read_prompts(Path(opts.teacher) / "prompts.txt")
    texts = prompts.read([i % len(prompts) for i in range(opts.eval)])
    eps = torch.randn(opts.eval, *opts.shape, generator=torch.Generator().manual_seed(judging.JUDGE_SEED)).to(opts.device)
    scores, _, _ = judging.judge_guided(parts, judge.judge, judge.reference, texts, eps, ws=WS, student=student,
                                        dtype=opts.dtype, teacher_ks=ks)
    if student is not None:
        return {w: row["student"] for w, row in scores.items()}
    return {str(k): {w: row["teacher_ddim"][str(k)] for w, row in scores.items()} for k in ks}


# ----------------------------------------------------------------------------------------------------
# Report.


def winner(rows: list, budget: float, n: int) -> str:
    """Who has the lowest FD at w = W at this budget, by how much over the next, and the accuracy between those two."""
    at = sorted(((r["judged"][W], r["method"]) for r in rows if r["budget_min"] == budget), key=lambda x: x[0]["fd"])
    if len(at) < 2:
        return ""
    (b, first), (k, second) = at[:2]
    gap = (k["fd"] - b["fd"]) / b["fd"]
    fd = f"{first} by {gap:.0%} in FD over {second}" + (" (under 10%: one seed does not settle it)" if gap < 0.1 else "")
    se = (b["accuracy"] * (1 - b["accuracy"]) / n + k["accuracy"] * (1 - k["accuracy"]) / n) ** 0.5
    diff = b["accuracy"] - k["accuracy"]
    acc = ("a tie in accuracy" if diff == 0 else f"{first if diff > 0 else second} by {abs(diff):.3f} in accuracy" +
           (" (within 2 standard errors)" if abs(diff) < 2 * se else ""))
    return f"{fd}, {acc}"


def kind(row) -> str:
    """"kd" or "boot": what a row of the figures trained (KD's rows, variants too, count their pairs)."""
    return "kd" if "pairs" in row else "boot"


def variants(r, of="boot") -> dict:
    """BOOT's (or KD's) variants in a race's figures: {name: flags} (none in races run before they existed)."""
    return {row["method"]: row["flags"] for row in r["runs"]
            if row.get("flags") and row["method"] not in ("BOOT", "KD") and kind(row) == of}


def report(r) -> str:
    ws = [f"{w:g}" for w in r["ws"]]
    out = ["# BOOT against knowledge distillation at equal seconds, text-to-image\n",
           f"- machine: {r['machine']}; torch {r['torch']}; {r['date']}; {r['wall_s'] / 60:.1f} minutes in all",
           f"- command: `{r['command']}`",
           f"- teacher: {r['teacher']}; the student: the teacher's UNet plus a zero-initialised guidance input "
           f"(sd.make_student), one student for every w in [{W_LO:g}, {W_HI:g}]; batch {r['batch']}, AdamW lr "
           f"{r['lr']:g} constant, seed {r['seed']}",
           f"- {busy_line(r)}",
           f"- BOOT: `train_sd.py --guidance-range {W_LO:g},{W_HI:g}` with its defaults (Heun, N 16), in processes of "
           "its own (start-up counted), stopped by --time-limit at the budget. " + "".join(
               f"{name}: the same with `{shlex.join(flags)}`. " for name, flags in variants(r).items()) +
           f"KD: {PAIR_SHARE:.0%} of the budget on pairs (noise, a prompt of the file, w ~ U[{W_LO:g}, {W_HI:g}], the "
           "teacher's guided DDIM-k), then the student's one call at t = 0 and that w regressed on them: every "
           "(prompt, w) it learns costs a pair; BOOT draws fresh ones every step." + "".join(
               f" {name}: KD with train_sd's `{shlex.join(flags)}`, the corrector's term added to the regression."
               for name, flags in variants(r, "kd").items()),
           f"- judged alike: {r['eval']} samples per w from the same noise, prompts in turn; each cell the judge's "
           "prompted-digit accuracy / FD to the held-out digits. Teacher calls: rows the teacher evaluated (a guided "
           "call is 2); BOOT's end-of-run validation picture is left out.\n",
           "| budget | method | recipe | teacher calls | seconds | " + " | ".join(f"w = {w}" for w in ws) + " |",
           "|---|---|---|---|---|" + "---|" * len(ws)]
    cells = lambda row: " | ".join(f"{row[w]['accuracy']:.3f} / {row[w]['fd']:.1f}" for w in ws)
    for row in r["runs"]:
        what = f"{row['steps_done']:,} steps"
        if kind(row) == "kd":
            what = f"{row['pairs']:,} pairs of DDIM-{row['k']} ({row['pair_seconds']:.0f} s), " + what
        out.append(f"| {row['budget_min']:g} min | {row['method']} | {what} | {row['teacher_calls']:,} | "
                   f"{row['seconds']:.0f} | {cells(row['judged'])} |")
    for k, row in r["teacher_ddim"].items():
        out.append(f"| | teacher DDIM-{k} | {k} guided calls a sample | {2 * int(k)} a sample | | {cells(row)} |")
    out.append(f"\nWho wins each budget at w = {W}: " +
               "; ".join(f"{b:g} min: {winner(r['runs'], b, r['eval'])}" for b in r["budgets_min"]) + ".")
    out.append(f"\n![FD and accuracy at w = {W} against seconds and teacher calls]({Path(r['picture']).name})")
    return "\n".join(out)


def picture(r, path: Path):
    """FD and accuracy at w = W against seconds and teacher calls; at one budget, a bar per method."""
    metrics = [(f"FD to held-out digits, w = {W}", lambda row: row["judged"][W]["fd"], True),
               (f"prompted-digit accuracy, w = {W}", lambda row: row["judged"][W]["accuracy"], False)]
    levels = {f"teacher DDIM-{k}": [row[W]["fd"], row[W]["accuracy"]] for k, row in r["teacher_ddim"].items()}
    title = f"BOOT against KD at equal budgets, {r['teacher']} ({r['machine']})"
    if len(r["budgets_min"]) == 1:
        return pictures.plot_variants(path, r["runs"], metrics=metrics, levels=levels,
                                      title=f"{title}, {r['budgets_min'][0]:g} minutes each")
    pictures.plot_budget_curves(path, r["runs"], calls="rows evaluated", title=title, metrics=metrics, levels=levels)


def render(r, path: Path) -> str:
    """The markdown and picture beside path, the figures' JSON."""
    text = report(r)
    path.with_suffix(".md").write_text(text + "\n")
    picture(r, path.with_suffix(".png"))
    return text


def main(opts, argv, path: Path) -> dict:
    """The race, from race.py's parsed options (teacher, budgets, seed, quick)."""
    budgets = QUICK["budgets"] if opts.quick else opts.budgets
    opts.eval = QUICK["eval"] if opts.quick else EVAL
    opts.batch, opts.pair_batch = (QUICK["batch"], QUICK["pair_batch"]) if opts.quick else (BATCH, PAIR_BATCH)
    d = runtime.setup("cpu" if opts.quick else "auto")
    opts.device, opts.dtype = d.device, sd.resolved_dtype("auto", d.device)
    check_variants(opts, d.device)
    start = time.perf_counter()
    parts = sd.load_teacher(opts.teacher, sd.DTYPES[opts.dtype], d.device)
    resolution = parts.unet.config.sample_size * sd.vae_scale(parts.vae)
    opts.shape = sd.latent_shape(parts.vae, parts.unet, resolution)
    flag = f"bench/race.py --teacher {opts.teacher}"
    judge = judging.judge_fits(judging.find_judge(SimpleNamespace(judge=None), sd.read_prompts(
        Path(opts.teacher) / "prompts.txt"), opts.teacher, d, required=flag), resolution, d)
    shown = opts.teacher.replace(str(ROOT) + "/", "")
    r = dict(race="text-to-image", machine=runtime.machine_name(d.device), torch=torch.__version__, teacher=shown,
             seed=opts.seed, date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
             budgets_min=budgets, command=shlex.join(["python", "bench/race.py", *argv]), eval=opts.eval, ws=list(WS),
             batch=opts.batch, lr=LR, picture=str(path.with_suffix(".png").name), runs=[])
    say(f"the teacher's guided DDIM-{', '.join(map(str, TEACHER_KS))} on {opts.eval} noises per w (not timed)")
    r["teacher_ddim"] = judged(opts, parts, judge, ks=TEACHER_KS)
    methods = [("BOOT", "boot", [])] * opts.boot + [(name, "boot", flags) for name, flags in opts.variants.items()]
    methods += [("KD", "kd", [])] * opts.kd + [(name, "kd", flags) for name, flags in opts.kd_variants.items()]
    with tempfile.TemporaryDirectory(prefix="race-t2i-") as tmp:
        for budget in budgets:
            for method, trained, flags in methods:
                say(f"{budget:g} min: {method}")
                where = Path(tmp) / f"{method}-{budget:g}".replace(" ", "_").replace("+", "plus")
                student, row = (kd_run if trained == "kd" else boot_run)(opts, 60 * budget, d, where, flags)
                busy, now = row.pop("busy"), runtime.cpu_seconds()
                row["other_cpu_s"] = None if busy is None else now[1] - busy[1]
                row["judged"] = judged(opts, parts, judge, student=student)
                r["runs"].append(dict(budget_min=budget, method=method, flags=flags, **row))
                at = row["judged"][W]
                say(f"{budget:g} min: {method}: w = {W} accuracy {at['accuracy']:.3f}, FD {at['fd']:.1f}, "
                    f"{row['seconds']:.0f} s")
                path.write_text(json.dumps(r | {"wall_s": time.perf_counter() - start}, indent=1))  # kept if stopped
    r["wall_s"] = time.perf_counter() - start
    path.write_text(json.dumps(r, indent=1))
    print(render(r, path))
    say(f"wrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return r
