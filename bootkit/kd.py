"""bootkit/kd.py: the baseline BOOT replaces, knowledge distillation (Luhman & Luhman 2021): offline pairs of
(noise, the teacher's DDIM-k sample from it), then the student regressed at t = 0 on them, with train_toy's
optimizer, schedule, EMA and loop (bootkit.toy, runtime.Trainer). The benchmark and the races both use it, and the
races (bench/race.py, pixels; bench/race_t2i.py, text-to-image) share their sizing, counting and reporting below."""
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

import boot
from bootkit import runtime, toy


def pairs(teacher, schedule, noise, *, k: int, batch: int, until=None):
    """(noise, teacher DDIM-k from it), a batch at a time; with `until` (a time.perf_counter() deadline) no batch
    starts after it, so fewer pairs than noises may come back (at least one batch)."""
    out = []
    with tqdm(total=len(noise), desc=f"KD pairs, DDIM-{k}", unit="pair", dynamic_ncols=True) as bar:
        for start in range(0, len(noise), batch):
            if out and until is not None and time.perf_counter() >= until:
                break
            out.append(boot.ddim_sample(teacher, noise[start:start + batch], schedule=schedule, steps=k))
            bar.update(len(out[-1]))
    target = torch.cat(out)
    return noise[:len(target)], target


def train(args, d, student, noise, target, out, budget=None, corrector=None):
    """Regress g(noise, 0) on the teacher's samples with toy.train's optimizer, schedule, EMA and loop; budget:
    as toy.train's. corrector: a toy.Corrector whose term is added (DMD's own form: a regression on teacher pairs plus
    the distribution-matching term). Returns the student to evaluate (the EMA if on)."""
    optimizer, lr_schedule, ema = toy.optimization(args, student, budget)
    trainer = runtime.Trainer(out=out, model=student, optimizer=optimizer, lr_schedule=lr_schedule, ema=ema,
                              dist_info=d, config={}, ckpt_every=args.ckpt_every,
                              extras={"fake": (corrector.net, corrector.optimizer)} if corrector else None)

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, d.rank, step, d.device)
        i = torch.randint(len(noise), (args.batch_size,), generator=gen, device=d.device)
        loss = (student(noise[i], noise.new_zeros(len(i))) - target[i]).pow(2).flatten(1).mean(1).mean()
        corrected = corrector and corrector.loss(student, step, gen, noise.shape[1:])
        if not corrected:
            return loss, {"loss": loss.detach()}
        return loss + corrected[0], {"loss": loss.detach()} | corrected[1] | {"terms": {"kd": loss, "corrector": corrected[0]}}

    trainer.fit(args.steps, loss_fn, desc=f"kd {Path(out).name}", until=budget and budget[0] + budget[1])
    return (ema.module if ema is not None else student).eval()


# ----------------------------------------------------------------------------------------------------
# The races' shared pieces: how a budget is split and sized, teacher calls counted as made, the machine's load.

STEP_CAP = 10 ** 7     # a budgeted run's --steps: the budget ends it first
PAIR_SHARE = 0.15      # KD: the budget's share spent on pairs
KD_KS, KD_MIN_PAIRS = (8, 16, 32), 1024


class Counting:
    """The teacher, counting the rows it evaluates (per-sample teacher calls)."""

    def __init__(self, teacher):
        self.teacher, self.rows = teacher, 0

    def __call__(self, x_t, t, cond=None):
        self.rows += len(x_t)
        return self.teacher(x_t, t, cond)


def kd_k(seconds: float, call_seconds: float, batch: int) -> int:
    """KD's k: the largest of KD_KS whose pairs, at call_seconds a teacher call on `batch` rows, reach KD_MIN_PAIRS
    in `seconds`; the smallest when none does."""
    fits = [k for k in KD_KS if seconds / (k * call_seconds) * batch >= KD_MIN_PAIRS]
    return max(fits, default=min(KD_KS))


def log_records(out: Path) -> list:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def last_step(out: Path) -> int:
    return max(r["step"] for r in log_records(out))


def busy_line(r) -> str:
    """Whether the machine was otherwise idle: the other processes' CPU seconds during each run of a race (readings
    within NOISE_CPU_S of 0 are the two clocks' ticks, not work)."""
    rows = [row for row in r["runs"] if row.get("other_cpu_s") is not None]
    if not rows:
        return "other processes' CPU time: not measured (no /proc/stat)"
    busy = [row for row in rows if row["other_cpu_s"] / row["seconds"] >= 0.05 and row["other_cpu_s"] > NOISE_CPU_S]
    if not busy:
        return "other processes' CPU time during each run: under 5% of one core: the machine was otherwise idle"
    return ("other processes' CPU time: the machine was NOT idle during " + ", ".join(
        f"{row['budget_min']:g} min {row['method']} ({row['other_cpu_s']:.0f} CPU s, {row['other_cpu_s'] / row['seconds']:.0%}"
        " of one core)" for row in busy) + "; the other runs had it to themselves")


NOISE_CPU_S = 10.0
