"""bench/race.py: BOOT against knowledge distillation at equal budgets of seconds on this machine.

    python bench/race.py --budgets 2 5 15 --json bench/results/race.json    # teachers/mnist16 (minutes per budget)
    python bench/race.py --quick --json /tmp/race.json                        # seconds-long budgets: the pieces only
    python bench/race.py --render bench/results/race.json                     # the markdown and PNG again, from JSON
    python bench/race.py --teacher teachers/mnist-t2i --budgets 2 5 10         # text-to-image: bench/race_t2i.py

Each budget B is wall-clock seconds of this one process, both methods in turn, on the same student (train_toy's
pixel default: the teacher's copy, the same seed) with train_toy's optimizer and loop:
- BOOT: train_toy's recipe without the corrector (plain BOOT; the corrector is a variant: --variant 'BOOT +
  corrector=--corrector-weight 1'), its learning rate's warm-up and cosine decay run over B's seconds in place of steps
  (warm-up WARMUP_SHARE of them, as the default's 200 of 2,500 steps), so that each run anneals to 0 at its
  deadline whatever its speed (runtime.timed_warmup_cosine); no step starts after B.
- KD (Luhman & Luhman 2021): the first PAIR_SHARE of B makes pairs (noise, the teacher's DDIM-k from it), k the
  largest of KD_KS that gives KD_MIN_PAIRS pairs there (else the smallest), as a user sizes it; then the same
  student regressed at t = 0, its schedule over the rest of B.
Both are judged on the same noises (seed + 1, as train_toy's evaluation) against the teacher's DDIM-REF from them,
and by the teacher's judge (FD to held-out digits, class shares). Teacher calls are counted as made (rows the
teacher evaluates). Every other process's CPU seconds during each run (/proc/stat) say whether
the machine was otherwise idle. Writes JSON, markdown beside it, and a PNG (FD and RMSE against seconds and calls).
"""
import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's root: boot.py and bootkit/

import torch

import boot
import race_t2i
from bootkit import evaluation, judging, kd, metrics, pictures, runtime, toy
from bootkit.racing import KD_KS, KD_MIN_PAIRS, PAIR_SHARE, STEP_CAP, Counting, busy_line, kd_k, last_step

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "teachers/mnist16"
WARMUP_SHARE = 0.08    # of the budget's seconds: train_toy's pixel default warms up over 200 steps of 2,500
EVAL, REF = 1000, 64   # evaluation noises, the reference's DDIM steps (train_toy's CPU default reference)
CURVE_KS = (1, 2, 4, 8, 16, 32)
QUICK = dict(budgets=[0.05, 0.1], eval=32, ref=8, flags=["--batch-size", "8"])


def say(*args):
    print("race:", *args, file=sys.stderr, flush=True)


def parse_args(argv):
    p = runtime.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=TEACHER, help="a pixel teacher folder with a judge/ (teachers/train_teacher.py), "
                   "or a text-to-image one (teachers/mnist-t2i): the text-to-image race of bench/race_t2i.py")
    p.add_argument("--budgets", nargs="+", type=runtime.positive(float), default=[2, 5, 15, 30, 60], metavar="MIN",
                   help="budgets in minutes of this machine, each run by both methods")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also race BOOT with these train_toy flags (train_sd flags for a text-to-image --teacher), "
                        "e.g. 'constant weight=--weighting constant'")
    p.add_argument("--kd-variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also race KD with these train_toy flags, e.g. 'KD + corrector=--corrector-weight 1' (for a "
                        "text-to-image --teacher, the corrector's train_sd flags)")
    p.add_argument("--kd", action=argparse.BooleanOptionalAction, default=True,
                   help="race KD too (--no-kd: BOOT and its variants only, levers at equal seconds)")
    p.add_argument("--boot", action=argparse.BooleanOptionalAction, default=True,
                   help="race plain BOOT (--no-boot: its variants and KD's only, e.g. one side of a race split "
                        "between two processes)")
    p.add_argument("--seed", type=int, default=0, help="seed of both methods' runs (weights, noises, pairs)")
    p.add_argument("--quick", action="store_true", help="budgets of seconds, 32 noises: checks the pieces, not the figures")
    p.add_argument("--json", help="where the figures go (default bench/results/race.json, race-t2i.json for a "
                                   "text-to-image teacher); markdown beside it (.md), the picture as NAME.png")
    p.add_argument("--render", metavar="JSON", help="measure nothing: the markdown and picture of a --json file")
    opts = p.parse_args(argv)
    opts.variants, opts.kd_variants = {}, {}
    for flag, given, variants in (("--variant", opts.variant, opts.variants), ("--kd-variant", opts.kd_variant, opts.kd_variants)):
        for v in given:
            name, sep, flags = v.partition("=")
            name = name.strip()
            if not sep or not name or name in ("BOOT", "KD", *opts.variants, *opts.kd_variants):
                p.error(f"argument {flag}: NAME=FLAGS with a name other than BOOT, KD and the other variants', got {v!r}")
            variants[name] = shlex.split(flags)
            text = race_t2i.is_text_teacher(opts.teacher)
            if text and flag == "--variant":
                continue  # train_sd flags: race_t2i checks them with train_sd.py itself before the first run
            try:  # now, not when the variant's turn comes after minutes of other runs
                with contextlib.redirect_stderr(io.StringIO()) as said:
                    if text:
                        race_t2i.kd_variant_args(variants[name])
                    else:
                        toy.parse_args(["--teacher", opts.teacher, *variants[name]])
            except runtime.UsageError as e:
                p.error(f"argument {flag} {name!r}: {e}")
            except SystemExit:
                why = said.getvalue().strip().split(": error: ", 1)[-1].removesuffix(" (see --help)")
                p.error(f"argument {flag} {name!r}: {why}")
    if not (opts.boot or opts.variants or opts.kd or opts.kd_variants):
        p.error("--no-boot and --no-kd without a --variant or --kd-variant: nothing to race")
    return opts


def recipe(opts, extra, out, device):
    """train_toy's flags for a budgeted run: the steps a cap the budget ends first (the schedule follows seconds)."""
    flags = ["--teacher", opts.teacher, "--seed", str(opts.seed), "--device", str(device), "--corrector-weight", "0"]
    flags += opts.flags + extra  # BOOT and KD alone unless a variant asks for the corrector
    return toy.parse_args(flags + ["--steps", str(STEP_CAP), "--out", str(out)])


def boot_run(opts, extra, budget, d, tmp):
    start, busy = time.perf_counter(), runtime.cpu_seconds()
    args = recipe(opts, extra, tmp, d.device)
    teacher, schedule, student, shape, _ = toy.build(args, d.device)
    counting = Counting(teacher)
    student, _ = toy.train(args, d, counting, schedule, student, shape, budget=(start, budget, WARMUP_SHARE))
    return student, dict(seconds=time.perf_counter() - start, busy=busy, steps_done=last_step(tmp),
                         teacher_calls=counting.rows)


def kd_run(opts, extra, budget, d, tmp):
    start, busy = time.perf_counter(), runtime.cpu_seconds()
    args = recipe(opts, extra, tmp, d.device)
    teacher, schedule, student, shape, _ = toy.build(args, d.device)
    counting = Counting(teacher)
    gen = torch.Generator().manual_seed(opts.seed + 100)  # pair noises apart from the evaluation's (seed + 1)
    probe = torch.randn(args.batch_size, *shape, generator=gen).to(d.device)
    clock = time.perf_counter()
    boot.ddim_sample(counting, probe, schedule=schedule, steps=1)  # one teacher call times a call
    call_seconds = time.perf_counter() - clock
    k = kd_k(PAIR_SHARE * budget - (time.perf_counter() - start), call_seconds, args.batch_size)
    most = int(PAIR_SHARE * budget / call_seconds / k * args.batch_size * 2) + args.batch_size
    noise = torch.randn(most, *shape, generator=gen).to(d.device)
    x, target = kd.pairs(counting, schedule, noise, k=k, batch=args.batch_size, until=start + PAIR_SHARE * budget)
    trained = time.perf_counter()
    corrector = toy.Corrector(args, d, counting, schedule) if args.corrector_weight else None
    student = kd.train(args, d, student, x, target, tmp, budget=(trained, start + budget - trained, WARMUP_SHARE),
                       corrector=corrector)
    return student, dict(seconds=time.perf_counter() - start, busy=busy, steps_done=last_step(tmp),
                         teacher_calls=counting.rows, k=k, pairs=len(x), pair_seconds=trained - start)


def teacher_figures(opts, d):
    """The evaluation's noise, the teacher's DDIM-REF from it, its DDIM-k curve and judged figures."""
    args = recipe(opts, [], "unused", d.device)
    teacher, schedule, _, shape, _ = toy.build(args, d.device)
    judge = evaluation.find_judge(args, shape, d.device)
    if judge is None:
        raise runtime.UsageError(f"--teacher {opts.teacher}: no judge/ folder (teachers/train_teacher.py writes one)")
    eps = torch.randn(opts.eval, *shape, generator=torch.Generator().manual_seed(opts.seed + 1)).to(d.device)
    weights = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(opts.teacher).glob("unet/*")))).hexdigest()[:16]
    cache = ROOT / "runs" / "race-cache" / f"{Path(opts.teacher).name}-{weights}-n{opts.eval}-ref{opts.ref}-seed{opts.seed}.pt"
    if cache.exists() and not opts.quick:  # the teacher's figures on these noises, from an earlier race (runs/ is not committed)
        say(f"the teacher's DDIM-{opts.ref} and DDIM-k on {opts.eval} noises: from {cache}")
        saved = torch.load(cache)
        return eps, saved["reference"].to(d.device), saved["curve"], judge, saved["rows"]
    sample = lambda k: metrics.batched(lambda e: boot.ddim_sample(teacher, e, schedule=schedule, steps=k), eps, 64)
    say(f"the teacher's DDIM-{opts.ref} and DDIM-k on {opts.eval} noises (not timed)")
    reference = sample(opts.ref)
    ddim = {k: sample(k) for k in CURVE_KS if k < opts.ref}
    curve = {k: metrics.rmse(x, reference, True) for k, x in ddim.items()}
    scores = evaluation.judged(judge, {"reference": reference, **{str(k): x for k, x in ddim.items()}})
    rows = {str(k): dict(rmse=curve.get(k, 0.0), fd=scores["fd"][key], class_share=scores["class_share"][key])
            for k, key in [*[(k, str(k)) for k in ddim], (opts.ref, "reference")]}
    if opts.quick:
        return eps, reference, curve, judge, rows
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"reference": reference.cpu(), "curve": curve, "rows": rows}, cache)
    return eps, reference, curve, judge, rows


def winner(rows: list, budget: float) -> str:
    """Who has the lowest FD at this budget, and by how much over the next."""
    at = sorted((r for r in rows if r["budget_min"] == budget), key=lambda r: r["fd"])
    if len(at) < 2:
        return "one method in this race, no winner"
    gap = (at[1]["fd"] - at[0]["fd"]) / at[0]["fd"]
    return (f"{at[0]['method']} by {gap:.0%} in FD over {at[1]['method']}"
            + (" (under 10%: one seed does not settle it)" if gap < 0.1 else ""))


def report(r) -> str:
    step = r.get("step", "DDIM")  # races measured before the step was named ran on DDIM teachers, or say so in their JSON
    kd_ran = any("pairs" in row for row in r["runs"])  # --no-kd: BOOT and its variants only
    variants = {row["method"]: ("KD" if "pairs" in row else "BOOT", row["flags"]) for row in r["runs"]
                if row["method"] not in ("BOOT", "KD")}
    boot_ran = any("pairs" not in row for row in r["runs"])  # --no-boot with KD alone: nothing of BOOT's recipe
    recipes = ("BOOT: train_toy's recipe without the corrector, its learning rate's warm-up and cosine decay over the budget's seconds "
               f"(warm-up {WARMUP_SHARE:.0%} of them), no step after it." if boot_ran else "")
    if variants:
        recipes += (" Variants, BOOT's or KD's recipe with these flags: " if kd_ran else " Its variants, the same with "
                    "these flags: ") + ", ".join(f"{name} ({kind + ' with ' if kd_ran else ''}`{shlex.join(flags)}`)"
                                                 for name, (kind, flags) in variants.items()) + "."
    if kd_ran:
        recipes += (f" KD: {PAIR_SHARE:.0%} of the budget on pairs of the teacher's {step}-k (k the largest of "
                    f"{', '.join(map(str, KD_KS))} that gives {KD_MIN_PAIRS:,} pairs), then the same student, optimizer "
                    "and loop regressed at t = 0, its schedule over the rest of the budget.")
    out = ["# BOOT against knowledge distillation at equal seconds\n" if kd_ran else "# BOOT's levers at equal seconds\n",
           f"- machine: {r['machine']}; torch {r['torch']}; {r['date']}; {r['wall_s'] / 60:.1f} minutes in all",
           f"- command: `{r['command']}`",
           f"- teacher: {r['teacher']}; the student: train_toy's pixel default (the teacher's copy), seed {r['seed']}",
           f"- {busy_line(r)}",
           f"- {recipes.strip()}",
           f"- judged alike: {r['eval']} noises (seed + 1), RMSE per pixel to the teacher's {step}-{r['ref']} from them, "
           f"effective NFE on its {step}-k curve, FD of the teacher's judge to held-out digits, class shares (uniform 0.100)."
           " Teacher calls: rows the teacher evaluated.\n",
           "| budget | method | recipe | teacher calls | seconds | RMSE | effective NFE | FD | class shares, min - max |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in r["runs"]:
        what = f"{row['steps_done']:,} steps"
        if "pairs" in row:
            what = f"{row['pairs']:,} pairs of {step}-{row['k']} ({row['pair_seconds']:.0f} s), " + what
        out.append(f"| {row['budget_min']:g} min | {row['method']} | {what} | {row['teacher_calls']:,} | "
                   f"{row['seconds']:.0f} | {row['rmse']:.4f} | {row['effective_nfe']:.1f} | {row['fd']:.1f} | "
                   f"{min(row['class_share']):.3f} - {max(row['class_share']):.3f} |")
    maps = [row for row in r["runs"] if "error_map" in row]
    if maps:
        m = maps[0]["error_map"]
        out += [f"\nWhere a BOOT student's error enters ({m['noises']} of the noises; evaluation.error_map): its RMSE "
                f"per pixel to its own fixed point (the teacher's {len(m['t']) - 1}-step sampler of the training's "
                f"order: Heun, or {step} with --order 1) at each grid time, t_0 = 0 (the sample) first, and the largest "
                "one-hop residual (hop k -> k - 1).\n",
                "| budget | method | to the fixed point, t_0 ... t_N | largest hop |", "|---|---|---|---|"]
        for row in maps:
            e = row["error_map"]
            hop = max(range(1, len(e["one_hop"])), key=lambda k: e["one_hop"][k])
            out.append(f"| {row['budget_min']:g} min | {row['method']} | {' '.join(f'{v:.3f}' for v in e['to_fixed_point'])} "
                       f"| {e['one_hop'][hop]:.3f} (k = {hop}) |")
    out += ["\nThe teacher on the same noises:\n", "| sampler | RMSE | FD | class shares, min - max |", "|---|---|---|---|"]
    for k, t in r["teacher_ddim"].items():
        out.append(f"| {step}-{k}{' (the reference)' if int(k) == r['ref'] else ''} | {t['rmse']:.4f} | {t['fd']:.1f} | "
                   f"{min(t['class_share']):.3f} - {max(t['class_share']):.3f} |")
    out.append("\nWho wins each budget: " + "; ".join(f"{b:g} min: {winner(r['runs'], b)}" for b in r["budgets_min"]) + ".")
    out.append(f"\n![FD and RMSE against seconds and teacher calls]({Path(r['picture']).name})")
    return "\n".join(out)


def picture(r, path: Path):
    """FD and RMSE against seconds and teacher calls; at one budget (a table of levers), a bar per method."""
    ref, step = r["ref"], r.get("step", "DDIM")
    level = lambda k, metric: r["teacher_ddim"].get(k, {}).get(metric) or None  # the reference is RMSE 0: no level
    what = "BOOT against KD" if any("pairs" in row for row in r["runs"]) else "BOOT's levers"
    metrics = [("FD to held-out digits", lambda row: row["fd"], True),
               (f"RMSE per pixel to the teacher's {step}-{ref}", lambda row: row["rmse"], True)]
    levels = {f"teacher {step}-{k}": [level(k, "fd"), level(k, "rmse")] for k in ("8", "16") if int(k) < ref}
    title = f"{what} at equal budgets, {r['teacher']} ({r['machine']})"
    if len(r["budgets_min"]) == 1:
        return pictures.plot_variants(path, r["runs"], metrics=metrics, levels=levels,
                                      title=f"{title}, {r['budgets_min'][0]:g} minutes each")
    pictures.plot_budget_curves(path, r["runs"], calls="per sample", title=title, metrics=metrics, levels=levels)


def render(path: Path) -> str:
    try:
        r = json.loads(path.read_text())
        if r.get("race") == "text-to-image":
            return race_t2i.render(r, path)
        text = report(r)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise runtime.UsageError(f"--render {path}: not figures of this race ({type(e).__name__}: {e})") from None
    path.with_suffix(".md").write_text(text + "\n")
    picture(r, path.with_suffix(".png"))
    return text


@runtime.cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(argv)
    if opts.render:
        return render(Path(opts.render))
    if not Path(opts.teacher).is_absolute() and not Path(opts.teacher).exists() and (ROOT / opts.teacher).exists():
        opts.teacher = str(ROOT / opts.teacher)
    text = race_t2i.is_text_teacher(opts.teacher)
    path = Path(opts.json or Path(__file__).resolve().parent / "results" / f"race{'-t2i' if text else ''}.json")
    if path.is_dir() or path.suffix != ".json":
        raise runtime.UsageError(f"--json {path}: name a file ending .json (the markdown and picture go beside it)")
    if text:
        path.parent.mkdir(parents=True, exist_ok=True)
        opts.teacher = str(Path(opts.teacher).resolve())
        return race_t2i.main(opts, argv, path)
    opts.eval, opts.ref, opts.flags = (QUICK["eval"], QUICK["ref"], QUICK["flags"]) if opts.quick else (EVAL, REF, [])
    budgets = QUICK["budgets"] if opts.quick else opts.budgets
    path.parent.mkdir(parents=True, exist_ok=True)
    d = runtime.setup("cpu" if opts.quick else "auto")
    start = time.perf_counter()
    shown = opts.teacher.replace(str(ROOT) + os.sep, "")
    r = dict(machine=runtime.machine_name(d.device), torch=torch.__version__, teacher=shown, seed=opts.seed,
             date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), budgets_min=budgets,
             command=shlex.join(["python", "bench/race.py", *argv]), eval=opts.eval, ref=opts.ref,
             picture=str(path.with_suffix(".png").name), runs=[])
    eps, reference, curve, judge, r["teacher_ddim"] = teacher_figures(opts, d)
    r["step"] = judging.step_name(toy.build(recipe(opts, [], "unused", d.device), d.device)[1])  # Euler on a flow
    methods = [("BOOT", "boot", [])] * opts.boot + [(name, "boot", flags) for name, flags in opts.variants.items()]
    methods += [("KD", "kd", [])] * opts.kd + [(name, "kd", flags) for name, flags in opts.kd_variants.items()]
    with tempfile.TemporaryDirectory(prefix="race-") as tmp:
        for budget in budgets:
            for method, kind, flags in methods:
                say(f"{budget:g} min: {method}")
                where = Path(tmp) / f"{method}-{budget:g}".replace(" ", "_").replace("+", "plus")
                seconds = 60 * budget
                student, row = (kd_run if kind == "kd" else boot_run)(opts, flags, seconds, d, where)
                busy, now = row.pop("busy"), runtime.cpu_seconds()
                row["other_cpu_s"] = None if busy is None else now[1] - busy[1]
                row |= evaluation.score(student, eps, reference, curve, True, judge)
                if kind == "boot":  # where a BOOT student's error enters, on its training grid (KD trains t = 0 only)
                    args = recipe(opts, flags, "unused", d.device)
                    teacher, schedule, *_ = toy.build(args, d.device)
                    grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
                    row["error_map"] = evaluation.error_map(teacher, schedule, student, eps[:evaluation.ERROR_MAP_NOISES],
                                                            grid=grid, order=args.order, per_pixel=True, batch=64)
                r["runs"].append(dict(budget_min=budget, method=method, flags=flags, **row))
                say(f"{budget:g} min: {method}: RMSE {row['rmse']:.4f}, FD {row['fd']:.1f}, {row['seconds']:.0f} s")
                path.write_text(json.dumps(r | {"wall_s": time.perf_counter() - start}, indent=1))  # kept if stopped
    r["wall_s"] = time.perf_counter() - start
    text = report(r)
    print(text)
    path.write_text(json.dumps(r, indent=1))
    path.with_suffix(".md").write_text(text + "\n")
    picture(r, path.with_suffix(".png"))
    say(f"wrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return r


if __name__ == "__main__":
    main()
