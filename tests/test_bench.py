"""Tests of bench/benchmark.py: one --quick run on the CPU, checked for behaviour (sections, counts, consistency), not speed."""
import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend with each other on a shared machine

import pytest
import torch
from hypothesis import given, settings, strategies as st

import benchmark as bench
import boot
from bootkit import exact, metrics, racing, runtime, toy

torch.set_num_threads(1)
TEACHERS = ("mixture", "digits")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    bench.main(["--quick", "--device", "cpu", "--teachers", *TEACHERS, "--json", str(path), "--seed", "0"])
    return json.loads(path.read_text()), path


def _sane(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_section_is_written_as_json_and_markdown(quick):
    r, path = quick
    assert list(r["fidelity"]) == list(r["step"]) == list(TEACHERS)
    assert list(r["sampling"]) == ["2-D", "digits"]
    assert r["sd"].startswith("skipped on the CPU")  # never the SD-1.5 shape on a CPU
    assert r["command"] == f"python bench/benchmark.py --quick --device cpu --teachers mixture digits --json {path} --seed 0"
    assert r["machine"] and r["date"] and _sane(r["wall_s"])
    markdown = path.with_suffix(".md").read_text()
    for heading in ("Fidelity", "BOOT against knowledge distillation", "Sampling", "Training step", "Stable-Diffusion-1.5"):
        assert f"## {heading}" in markdown
    assert "below target 16" in markdown and "below target 8" in markdown  # a 24-step student misses both, and says so


def test_effective_nfe_is_the_students_rmse_read_on_the_teachers_curve(quick):
    r, _ = quick
    for f in r["fidelity"].values():
        final = f["final"]
        curve = {int(k): v for k, v in final["teacher_ddim_rmse"].items()}
        assert sorted(curve) == list(metrics.DDIM_KS) and all(map(_sane, curve.values()))
        assert final["effective_nfe"] == pytest.approx(metrics.effective_nfe(final["student_rmse"], curve))
        for row in f["boot"] + f["kd"]:
            assert _sane(row["rmse"]) and _sane(row["effective_nfe"])
            assert row["effective_nfe"] == pytest.approx(metrics.effective_nfe(row["rmse"], curve))
        assert max(f["boot"], key=lambda b: b["steps"])["rmse"] == pytest.approx(final["student_rmse"])  # same student
        shares = final["mode_share"]["student"]
        assert len(shares) == (10 if f["recipe"]["data"] == "digits" else 8) and sum(shares) == pytest.approx(1)


def test_recipe_is_train_toys_own_and_teacher_calls_follow_it(quick):
    r, _ = quick
    budget = {"--data", "--seed", "--device", "--steps", "--batch-size", "--eval-samples", "--reference-steps"}
    for f in r["fidelity"].values():
        assert {flag for flag in f["flags"] if flag.startswith("--")} <= budget  # nothing else of the recipe is set
        assert f["recipe"] == vars(toy.parse_args(f["flags"] + ["--out", "unused"])) | {"out": None}
        a = f["recipe"]
        assert sorted(b["steps"] for b in f["boot"]) == sorted({max(1, a["steps"] // q) for q in bench.FRACTIONS})
        assert [b["teacher_calls"] for b in f["boot"]] == [bench.boot_teacher_calls(SimpleNamespace(**(a | {"steps": b["steps"]})))
                                                        for b in f["boot"]]  # counted as the teacher sees them: below
        assert [(k["pairs"], k["k"], k["teacher_calls"]) for k in f["kd"]] == [(p, k, p * k) for p, k in bench.QUICK_KD]
        assert isinstance(f["verdict"]["boot_fewer_calls"], bool) and f["verdict"]["text"].startswith(("yes", "no"))


def test_cpu_budgets_only_ever_lower_train_toys_defaults():
    opts = bench.parse_args([])
    assert opts.teachers == list(bench.EXACT), "the default run: the exact teachers"
    for name in (*bench.EXACT, *bench.LEARNED):  # text-to-image teachers run train_sd.py's defaults, see below
        source = ["--teacher", str(bench.ROOT / bench.LEARNED[name])] if name in bench.LEARNED else ["--data", name]
        defaults = toy.parse_args(source + ["--out", "unused"])
        capped = toy.parse_args(bench.recipe_flags(name, opts, torch.device("cpu")) + ["--out", "unused"])
        for key, value in vars(capped).items():
            assert value == getattr(defaults, key) or key in ("device", "out") or value < getattr(defaults, key)
        assert bench.recipe_flags(name, opts, torch.device("cuda"))[6:] == []  # a GPU runs the defaults
    assert bench.recipe_flags("mnist16", opts, torch.device("cpu"))[:2] == ["--teacher", str(bench.ROOT / "teachers/mnist16")]


def test_speed_figures_are_positive_and_a_many_step_sampler_is_slower(quick):
    r, _ = quick
    for sp in r["sampling"].values():
        assert sorted(map(int, sp["ddim"])) == list(metrics.DDIM_KS) and _sane(sp["student_samples_per_s"])
        assert all(_sane(v["samples_per_s"]) for v in sp["ddim"].values())
        assert sp["ddim"]["64"]["speedup"] > 1, "64 calls of the student's twin outlast one call of the student"
    for name, c in r["step"].items():
        assert all(_sane(c[key]) for key in ("teacher_ms", "student_call_ms", "student_train_ms", "step_ms"))
        assert c["teacher_calls_per_step"] == r["fidelity"][name]["recipe"]["jump"] * r["fidelity"][name]["recipe"]["order"]



def test_the_pixel_default_s_teacher_calls_count_the_corrector_s(tmp_path):
    """A pixel teacher's default runs the corrector (one real-score call per sample of its batch, from its start):
    the benchmark's count, against the rows the teacher evaluated in toy.train."""
    args = toy.parse_args(["--teacher", str(bench.ROOT / "teachers/mnist16"), "--out", str(tmp_path / "run"), "--steps",
                           "3", "--batch-size", "4", "--corrector-batch", "3", "--corrector-start", "1", "--device", "cpu"])
    assert args.corrector_weight == 1
    d = runtime.setup("cpu")
    teacher, schedule, student, shape, _ = toy.build(args, d.device)
    counting = racing.Counting(teacher)
    toy.train(args, d, counting, schedule, student, shape)
    assert counting.rows == bench.boot_teacher_calls(args) == 3 * 4 * 2 + 2 * 3

def test_speedups_are_the_samplers_time_over_the_students():
    sp = bench.speedups({"student": 2.0, 1: 3.0, 8: 16.0}, batch=100)
    assert sp == {1: dict(samples_per_s=100_000 / 3, speedup=1.5, speedup_over_k=1.5),
                  8: dict(samples_per_s=6250.0, speedup=8.0, speedup_over_k=1.0)}


def test_the_floor_sums_the_parts_and_the_ratio_is_the_median_of_each_rounds_own():
    rounds = [dict(teacher_ms=1, student_call_ms=2, student_train_ms=3, step_ms=12),  # 2.0
              dict(teacher_ms=2, student_call_ms=2, student_train_ms=4, step_ms=12),  # 1.5
              dict(teacher_ms=3, student_call_ms=4, student_train_ms=5, step_ms=36)]  # 3.0
    f = bench.floor_figures(rounds)
    assert (f["teacher_ms"], f["student_call_ms"], f["student_train_ms"], f["step_ms"]) == (2, 2, 4, 12)
    assert f["floor_ms"] == 8 and f["step_over_floor_rounds"] == [2.0, 1.5, 3.0] and f["step_over_floor"] == 2.0


def test_each_whole_step_timing_reads_a_log_of_its_own(tmp_path):
    # Runs append to log.jsonl: a second teacher timed in the same folder once read the first one's records too.
    opts, d = bench.parse_args(["--quick"]), runtime.Dist(0, 1, torch.device("cpu"))
    for name in TEACHERS:
        bench.step_cost(bench.recipe_flags(name, opts, d.device), opts, d, tmp_path)
    logs = sorted(tmp_path.glob("*/log.jsonl"))
    assert len(logs) == len(TEACHERS)
    for log in logs:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        assert steps == sorted(set(steps))


@settings(deadline=None, max_examples=12, derandomize=True)
@given(jump=st.integers(1, 4), order=st.sampled_from([1, 2]), boundary=st.sampled_from(["exact", "loss"]),
       batch=st.integers(1, 7), k=st.integers(1, 6))
def test_teacher_calls_are_counted_as_the_teacher_evaluates_them(jump, order, boundary, batch, k):
    """BOOT: count every row the teacher sees in one boot_loss; KD: in one DDIM-k over the pairs' noise."""
    schedule, seen = boot.Schedule.cosine(), []
    mixture = exact.toy_teacher("mixture", schedule)
    counting = lambda x, t, cond=None: seen.append(len(x)) or mixture(x, t, cond)
    args = toy.parse_args(["--out", "unused", "--steps", "1", "--batch-size", str(batch), "--jump", str(jump),
                           "--order", str(order), "--boundary", boundary, "--bootstrap-steps", "8"])
    config = boot.BootConfig(jump=jump, order=order, boundary=boundary)
    boot.boot_loss(boot.MLPStudent(width=16), counting, torch.randn(batch, 2), schedule=schedule,
                   grid=boot.time_grid(schedule, 8), config=config)
    assert sum(seen) == bench.boot_teacher_calls(args)
    seen.clear()
    boot.ddim_sample(counting, torch.randn(batch, 2), schedule=schedule, steps=k)
    assert sum(seen) == batch * k  # P pairs of DDIM-k: P x k


@settings(deadline=None, max_examples=50, derandomize=True)
@given(st.lists(st.tuples(st.floats(0.01, 1), st.integers(1, 10 ** 6)), min_size=1, max_size=4),
       st.lists(st.tuples(st.floats(0.01, 1), st.integers(1, 10 ** 6)), min_size=1, max_size=4))
def test_verdict_says_yes_only_when_boot_matches_the_baselines_best_for_fewer_calls(boot_rows, kd_rows):
    rows = lambda pairs: [dict(rmse=e, teacher_calls=c) for e, c in pairs]
    v = bench.verdict(rows(boot_rows), rows(kd_rows))
    best = min(rows(kd_rows), key=lambda r: r["rmse"])
    assert v["boot_fewer_calls"] == any(e <= best["rmse"] and c < best["teacher_calls"] for e, c in boot_rows)
    assert v["text"].startswith("yes" if v["boot_fewer_calls"] else "no")


@pytest.mark.parametrize("argv", [["--teachers", "imagenet"], ["--bogus"], ["--seed", "one"], ["--json", "."]])
def test_bad_flags_get_one_line_and_a_nonzero_exit(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


@pytest.mark.parametrize("name", ["mnist16", "mnist16-flow"])  # a DDPM and a rectified flow
def test_a_learned_teacher_is_judged_and_timed_as_it_runs(name, tmp_path):
    path = tmp_path / "learned.json"
    bench.main(["--quick", "--device", "cpu", "--teachers", name, "--json", str(path)])
    r, markdown = json.loads(path.read_text()), path.with_suffix(".md").read_text()
    f = r["fidelity"][name]
    assert f["flags"][:2] == ["--teacher", f"teachers/{name}"] and f["recipe"]["init_from_teacher"]
    judge = f["final"]["judge"]
    for row in f["boot"] + f["kd"]:  # every student on the evaluation's noise, by the judge and the clock
        assert _sane(row["rmse"]) and _sane(row["fd"]) and row["seconds"] >= 0
        assert len(row["class_share"]) == 10 and sum(row["class_share"]) == pytest.approx(1)
    full = max(f["boot"], key=lambda b: b["steps"])
    assert full["fd"] == pytest.approx(judge["fd"]["student"]) and full["class_share"] == judge["class_share"]["student"]
    assert r["sampling"] == {} and "## Sampling" not in markdown, "a learned teacher's speeds are its real DDIM-k's"
    assert "### Learned teachers" in markdown and "below target 8" in markdown
    assert f"| {judge['fd']['teacher_ddim_4']:.1f} |" in markdown


def test_a_text_to_image_teacher_runs_train_sds_defaults_and_is_judged_per_w(tmp_path):
    import train_sd
    path = tmp_path / "t2i.json"
    bench.main(["--quick", "--device", "cpu", "--teachers", "mnist-t2i", "--json", str(path)])
    r, markdown = json.loads(path.read_text()), path.with_suffix(".md").read_text()
    t = r["text"]["mnist-t2i"]
    assert r["fidelity"] == {} and "## Fidelity" not in markdown, "train_toy's sections only for its teachers"
    defaults = train_sd.parser().parse_args(["--prompts", "unused"])
    quick = dict(zip(bench.QUICK_TEXT[0:-2:2], bench.QUICK_TEXT[1:-2:2]))
    for key in ("steps", "batch_size", "bootstrap_steps", "spacing", "order", "ema"):  # the defaults, quick budgets
        flag = "--" + key.replace("_", "-")
        assert str(t["recipe"][key]) == quick.get(flag, str(getattr(defaults, key))), key
    assert t["recipe"]["guidance_range"] == [1, 5] and t["recipe"]["lr"] == train_sd.LR_SMALL  # a 1 M-parameter UNet
    g = t["judged"]["guidance"]
    assert list(g) == ["1", "2", "3", "5"] and t["judged"]["samples"] == int(bench.QUICK_TEXT[-1])
    for w, row in g.items():
        assert list(row["teacher_ddim"]) == ["1", "2", "4", "8", "16", "50"]
        for cell in [row["student"], *row["teacher_ddim"].values()]:
            assert 0 <= cell["accuracy"] <= 1 and _sane(cell["fd"])
        assert (path.parent / row["picture"]).is_file() and f"({row['picture']})" in markdown
        assert f"{row['student']['accuracy']:.3f} / {row['student']['fd']:.1f}" in markdown
    assert "| student, 1 call | " in markdown and "| teacher DDIM-50 | " in markdown
    assert t["goals"] == bench.text_goals(t["judged"], t["goals"]["seconds"]) and t["goals"]["seconds"] > 0
    assert "distillation within 60 minutes" in markdown


def _judged(student, ddim8, ddim50, accuracies=(0.9, 0.95, 0.99, 0.99)):
    """A judged result: at w = 3 the student's and the teacher's (accuracy, FD); the student's accuracy per w."""
    cell = lambda accuracy, fd: {"accuracy": accuracy, "fd": fd}
    rows = {w: {"student": cell(a, 60.0), "teacher_ddim": {"8": cell(0.9, 90.0), "50": cell(0.9, 80.0)}}
            for w, a in zip(("1", "2", "3", "5"), accuracies)}
    rows["3"] = {"student": cell(*student), "teacher_ddim": {"8": cell(*ddim8), "50": cell(*ddim50)}}
    return {"guidance": rows, "samples": 500}


@pytest.mark.parametrize("student, ddim8, ddim50, accuracy_ok, fd_ok", [
    ((0.990, 69.3), (0.994, 97.1), (0.992, 82.0), False, True),  # the committed default: 2 samples short of DDIM-8
    ((0.994, 123.0), (0.994, 97.1), (0.992, 82.0), True, True),  # equal accuracy, FD at 1.5 x DDIM-50: both met
    ((0.996, 123.1), (0.994, 97.1), (0.992, 82.0), True, False)])
def test_text_goals_compare_the_student_with_the_teachers_ddim_8_and_ddim_50_at_w_3(student, ddim8, ddim50,
                                                                                    accuracy_ok, fd_ok):
    goals = bench.text_goals(_judged(student, ddim8, ddim50, (0.9, 0.95, student[0], 0.999)), seconds=61 * 60)
    assert (goals["accuracy_ok"], goals["fd_ok"], goals["minutes_ok"], goals["student_rises"]) == (
        accuracy_ok, fd_ok, False, True)
    assert bench.text_goals(_judged(student, ddim8, ddim50, (0.99, 0.9, 0.9, 0.9)), seconds=60)["student_rises"] is False


@pytest.mark.parametrize("accuracies, samples, rising", [
    ([0.5, 0.6, 0.7, 0.9], 100, True), ([0.5, 0.6, 0.595, 0.9], 100, True),  # down by half a sample: noise
    ([0.5, 0.6, 0.58, 0.9], 100, False), ([0.9, 0.9, 0.9, 0.9], 100, False), ([0.9, 0.8, 0.7, 0.6], 500, False)])
def test_accuracy_rises_with_w_up_to_one_sample_of_noise(accuracies, samples, rising):
    assert bench.rises(accuracies, samples) == rising


@pytest.mark.parametrize("name", ["exact", "learned", "t2i"])
def test_each_committed_result_renders_with_todays_report_into_its_committed_markdown(name):
    """bench/results/NAME.md is what `benchmark.py --render bench/results/NAME.json` writes, and its pictures exist."""
    results = Path(bench.__file__).parent / "results"
    markdown = (results / f"{name}.md").read_text()
    assert bench.report(json.loads((results / f"{name}.json").read_text())) + "\n" == markdown
    for link in re.findall(r"\]\(([^)]+\.png)\)", markdown):
        assert (results / link).is_file(), link
