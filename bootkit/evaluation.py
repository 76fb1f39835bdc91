"""bootkit/evaluation.py: how close one call gets (BOOT.md section 6), as train_toy.py and the benchmark measure
it: on fixed noise, the student's one call against the teacher's converged DDIM, the teacher's own DDIM-k curve,
effective NFE, any-t sampling, speed, the error map (where on the grid the student's error enters); for exact teachers
distance to the data, with a judge FD and class shares."""
import math
from pathlib import Path

import torch
from tqdm import tqdm

import boot
from bootkit import metrics, runtime


def eval_sizes(args, device, schedule):
    """(noises, reference DDIM steps, batch) of a pixel teacher's evaluation: the flags, or defaults sized to the
    device, since each step is a network call: on CUDA 1,000 noises and the teacher's own steps (the full
    figures), on the CPU 256 noises and DDIM-64 (minutes on a real teacher, seconds on a tiny one)."""
    cuda = device.type == "cuda"
    n, steps = args.eval_samples or (1000 if cuda else 256), args.reference_steps or (4096 if cuda else 64)
    return n, min(steps, schedule.train_steps or steps), 250 if cuda else 64  # a discrete teacher has n steps at most


ERROR_MAP_NOISES = 256  # a pixel teacher's error map: the first this many evaluation noises (2 N teacher steps a batch)


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


def score(student, noise, reference, curve, per_pixel, judge) -> dict:
    """RMSE and effective NFE of a one-call student on fixed noise against the teacher's reference from it and
    its DDIM-k curve; with a judge, FD and class shares."""
    x = metrics.batched(lambda e: boot.sample_student(student, e), noise, 256)
    err = metrics.rmse(x, reference, per_pixel)
    row = dict(rmse=err, effective_nfe=metrics.effective_nfe(err, curve))
    if judge is not None:
        row |= {key: value["student"] for key, value in judged(judge, {"student": x}).items()}
    return row


@torch.no_grad()
def error_map(teacher, schedule, student, eps, *, grid, order, per_pixel, batch=None) -> dict:
    """Where the error enters, on the training grid T = t_N > ... > t_0 = 0, from the noises eps:
    - to_fixed_point[k], k = 0 ... N: the student's g(eps, t_k) against its fixed point (fixed_point's row k, the
      teacher's N-step sampler in signal space); 0 at k = N by construction, where training uses the exact y_T and
      never asks the student. At k = 0 it is the sample's error to the teacher's N-step sampler.
    - one_hop[k], k = 1 ... N (None at 0): the training residual of hop k -> k - 1, unweighted: g(eps, t_{k-1})
      against one teacher step of the training's order from g(eps, t_k) (the exact y_T at k = N).
    A student wrong at t_j alone shows in to_fixed_point[j] and in hops j (its signal stepped) and j + 1 (compared).
    RMSE as metrics.rmse: per sample (Euclidean), or per pixel with per_pixel; in batches of `batch` noises."""
    grid = grid.to(eps.device)
    n, table, ends_at_0 = len(grid) - 1, schedule.coefficients(grid), bool(grid[0] == 0)

    def squared_errors(e):  # (b, 2, N + 1): each noise's |.|^2 to the fixed point and of each hop (0 where undefined)
        b, sq = e.shape[0], lambda x, ref: (x.double() - ref.double()).flatten(1).pow(2).sum(1)
        fixed = boot.fixed_point(teacher, e, schedule=schedule, grid=grid, order=order)
        g = [student(e, grid[k].float().expand(b)).to(e.dtype) for k in range(n)] + [fixed[n]]  # y_T exact at k = N
        hops = [torch.zeros(b, dtype=torch.float64, device=e.device)]
        for k in range(1, n + 1):
            at_t, at_s = ([c[m].expand(b) for c in table] for m in (k, k - 1))
            # boot's own training step (private; as boot._down_the_grid calls it): its last step, to t = 0, one call
            stepped = boot.teacher_step(teacher, g[k], e, None, t=grid[k].expand(b), s=grid[k - 1].expand(b),
                                         at_t=at_t, at_s=at_s, order=order, final=ends_at_0 and k == 1)
            hops.append(sq(g[k - 1], stepped))
        return torch.stack([torch.stack([sq(g[k], fixed[k]) for k in range(n + 1)], 1), torch.stack(hops, 1)], 1)

    rmse = metrics.batched(squared_errors, eps, batch).mean(0).div(eps[0].numel() if per_pixel else 1).sqrt().tolist()
    return {"t": grid.tolist(), "to_fixed_point": rmse[0], "one_hop": [None] + rmse[1][1:], "noises": len(eps),
            "order": order, "rmse": "per-pixel" if per_pixel else "per-sample (Euclidean)"}


def evaluate(args, teacher, schedule, student, shape, device, toy, judge=None):
    """Fidelity on fixed noise: the student's one call against the teacher's converged DDIM from the same
    noise, the teacher's own DDIM-k curve (k below the reference's steps), effective NFE, speed; for exact
    teachers, distance to the data; with a judge (load_judge), FD and class shares of each sampler; the error map
    on all the noises of an exact teacher, the first ERROR_MAP_NOISES of a pixel teacher's."""
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
    calls = lambda j: args.order * j - (args.order == 2)  # teacher calls of j steps: Heun's last, to t = 0, makes one
    with tqdm(total=chunks * sum(map(calls, js)), desc="any-t sampling", unit="call", dynamic_ncols=True) as bar:
        any_t = {j: metrics.batched(lambda e: boot.sample_any_t(student, ticking(teacher, bar), e, schedule=schedule,
                                                                grid=grid, j=j, order=args.order), eps, batch) for j in js}
    n_map = n if toy is not None else min(n, ERROR_MAP_NOISES)
    map_calls = math.ceil(n_map / (batch or n_map)) * 2 * calls(args.bootstrap_steps)  # fixed_point's N steps, then one
    with tqdm(total=map_calls, desc=f"error map ({n_map} noises)", unit="call", dynamic_ncols=True) as bar:  # from each t_k
        errors = error_map(ticking(teacher, bar), schedule, student, eps[:n_map], grid=grid, order=args.order,
                           per_pixel=per_pixel, batch=batch)
    speed_eps = eps[:batch or n]
    out = {
        "student_rmse": student_rmse,
        "teacher_ddim_rmse": {str(k): v for k, v in curve.items()},
        "effective_nfe": metrics.effective_nfe(student_rmse, curve),
        "any_t": [dict(teacher_steps=j, calls=1 + calls(j), rmse=err, effective_nfe=metrics.effective_nfe(err, curve))
                  for j, err in ((j, metrics.rmse(x, reference, per_pixel)) for j, x in any_t.items())],
        "samples_per_s": {"student": metrics.samples_per_second(lambda e: boot.sample_student(student, e), speed_eps),
                          **{f"teacher_ddim_{k}": metrics.samples_per_second(
                              lambda e: boot.ddim_sample(teacher, e, schedule=schedule, steps=k), speed_eps, repeats=1)
                             for k in ks}},
        "error_map": errors,
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
    if "error_map" in m:
        print_error_map(m["error_map"])
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


def print_error_map(e: dict):
    """Two lines: where on the grid the student's error to its fixed point is, and which hop's residual is largest,
    with whether the sample's error is already there hops before t_0 (inherited down the chain) or made at the end."""
    fp, hop, t, n = e["to_fixed_point"], e["one_hop"], e["t"], len(e["t"]) - 1
    worst, worst_hop = max(range(n + 1), key=fp.__getitem__), max(range(1, n + 1), key=hop.__getitem__)
    half = max((k for k in range(n + 1) if fp[k] >= fp[0] / 2), default=0)  # the first grid time, from T, with half t_0's
    where = ("the sample is on its fixed point" if not fp[0] > 0 else "made at the last hop" if half == 0
             else "built up over the last hops" if half <= max(1, n // 4) else "inherited down the chain")
    share = f"t_1 already carries {fp[1] / fp[0]:.0%} of it, " if fp[0] > 0 and n > 1 else ""
    print(f"error map ({e['noises']} noises, N = {n}, RMSE {e['rmse']}): the student to its fixed point {fp[0]:.4f} at "
          f"t_0 (the sample), largest {fp[worst]:.4f} at k = {worst} (t = {t[worst]:.3f}); {share}half of it reached by "
          f"k = {half} (t = {t[half]:.3f}): {where}")
    print(f"one-hop training residual: largest {hop[worst_hop]:.4f} on hop k = {worst_hop} -> {worst_hop - 1} "
          f"(t = {t[worst_hop]:.3f} -> {t[worst_hop - 1]:.3f}), last hop (to t_0) {hop[1]:.4f}, first (from the exact "
          f"y_T) {hop[n]:.4f}")


def find_judge(args, shape, device):
    """(judge, reference mean, reference covariance) from --judge or the teacher folder's judge/; None without."""
    folder = args.judge or (args.teacher and Path(args.teacher, "judge").is_dir() and str(Path(args.teacher, "judge")))
    if not folder:
        return None
    try:
        judge = metrics.load_judge(folder, device)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # missing file, bad JSON or weights
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise runtime.UsageError(f"--judge {folder} is not a judge folder that teachers/train_teacher.py wrote ({reason})") from None
    size = judge[0].config["size"]
    if tuple(shape) != (1, size, size):
        raise runtime.UsageError(f"--judge {folder} reads 1x{size}x{size} images; the teacher makes "
                                 f"{'x'.join(map(str, shape))}")
    return judge

