"""bootkit/racing.py: what the races (bench/race.py, pixels; bench/race_t2i.py, text-to-image) share: how a budget is
split and sized, teacher calls counted as made, a run's log, and whether the machine was otherwise idle."""
import json
from pathlib import Path


STEP_CAP = 10 ** 7     # a budgeted run's --steps: the budget ends it first
PAIR_SHARE = 0.15      # KD: the budget's share spent on pairs
KD_KS, KD_MIN_PAIRS = (8, 16, 32), 1024
NOISE_CPU_S = 10.0     # other processes' CPU seconds below this, over a run, are the two clocks' ticks, not work


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

