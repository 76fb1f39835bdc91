"""Tests of bench/race.py: one --quick race on teachers/mnist16, checked for behaviour (both methods per budget,
teacher calls as made, the fitted steps, the report from its JSON), never for speed."""
import json
import os

os.environ["OMP_NUM_THREADS"] = "1"  # tiny budgets: threads only contend with each other on a shared machine

import pytest
import torch

import race
from bootkit import judging, pictures, runtime, toy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("race") / "race.json"
    race.main(["--quick", "--json", str(path), "--variant", "constant weight=--weighting constant",
               "--kd-variant", "KD + corrector=--corrector-weight 1 --corrector-batch 4"])
    return json.loads(path.read_text()), path


def test_every_budget_runs_both_methods_and_each_variant_on_the_same_judged_noise(quick):
    r, path = quick
    assert [(row["budget_min"], row["method"]) for row in r["runs"]] == [
        (b, m) for b in race.QUICK["budgets"] for m in ("BOOT", "constant weight", "KD", "KD + corrector")]
    assert r["runs"][1]["flags"] == ["--weighting", "constant"]
    assert r["runs"][3]["flags"] == ["--corrector-weight", "1", "--corrector-batch", "4"] and r["runs"][3]["pairs"] > 0
    assert r["eval"] == race.QUICK["eval"] and r["ref"] == race.QUICK["ref"] and r["step"] == "DDIM"
    assert r["teacher_ddim"][str(r["ref"])]["rmse"] == 0  # the reference itself
    curve = [r["teacher_ddim"][str(k)]["rmse"] for k in race.CURVE_KS if k < r["ref"]]
    assert curve == sorted(curve, reverse=True), "the teacher's DDIM-k nears its reference as k grows"
    for row in r["runs"]:
        assert row["steps_done"] >= 1
        assert row["rmse"] > 0 and row["fd"] > 0 and abs(sum(row["class_share"]) - 1) < 1e-6
        assert row["other_cpu_s"] is None or row["other_cpu_s"] >= -1  # ticks round: a reading, not a figure
    assert path.with_suffix(".png").stat().st_size > 10_000


def test_teacher_calls_are_the_rows_the_teacher_evaluated(quick):
    r, _ = quick
    batch = int(race.QUICK["flags"][race.QUICK["flags"].index("--batch-size") + 1])
    for row in r["runs"]:
        if "pairs" in row:  # one probe call on a batch times the teacher, then P pairs of DDIM-k
            corrector = 4 * row["steps_done"] if row["flags"] else 0  # and one call on the corrector's 4 samples a step
            assert row["teacher_calls"] == batch + row["pairs"] * row["k"] + corrector
            assert row["pairs"] % batch == 0 and row["k"] in race.KD_KS
        else:  # Heun, jump 1, the exact boundary: two calls on the batch a step
            assert row["teacher_calls"] == row["steps_done"] * batch * 2


def test_the_markdown_and_picture_render_from_the_json_alone(quick):
    r, path = quick
    written = path.with_suffix(".md").read_text()
    path.with_suffix(".png").unlink()
    assert race.main(["--render", str(path)]) + "\n" == written
    assert path.with_suffix(".png").exists()
    assert "| 0.05 min | KD |" in written and "Who wins each budget: 0.05 min: " in written


def test_kd_takes_the_largest_k_that_makes_its_minimum_of_pairs_else_the_cheapest():
    assert race.kd_k(120.0, 0.01, 8) == 32   # DDIM-32: 120 / 0.32 x 8 = 3,000 pairs
    assert race.kd_k(30.0, 0.01, 8) == 16    # DDIM-32: 750 pairs, DDIM-16: 1,500
    assert race.kd_k(12.0, 0.01, 8) == 8     # DDIM-16: 600, DDIM-8: 1,200
    assert race.kd_k(1.0, 0.01, 8) == 8      # none reaches 1,024: the cheapest
    assert race.kd_k(1e9, 0.01, 8) == 32


def test_variants_need_a_name_and_are_parsed_as_flags():
    assert race.parse_args(["--variant", "lr=--lr 1e-4 --batch-size 32"]).variants == {"lr": ["--lr", "1e-4", "--batch-size", "32"]}
    for bad in ("--lr 1e-4", "=--lr 1e-4", "KD=--lr 1e-4"):
        with pytest.raises(SystemExit):
            race.parse_args(["--variant", bad])
    opts = race.parse_args(["--variant", "x=--lr 1e-4", "--kd-variant", "y=--corrector-weight 1"])
    assert opts.kd_variants == {"y": ["--corrector-weight", "1"]}
    with pytest.raises(SystemExit):  # one name, one method
        race.parse_args(["--variant", "x=--lr 1e-4", "--kd-variant", "x=--corrector-weight 1"])


@pytest.mark.parametrize("flags, words", [("--bogus", "unrecognized arguments: --bogus"),
                                          ("--weighting cubic", "argument --weighting: invalid choice: 'cubic'")])
def test_every_variant_is_parsed_before_the_first_run(flags, words, capsys):
    """A bad variant fails at once, in one line that names it, not when its turn comes after the other runs."""
    with pytest.raises(SystemExit) as stopped:
        race.parse_args(["--budgets", "60", "--variant", "good=--order 1", "--variant", f"x={flags}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and err.count("error") == 1, err
    assert f"argument --variant 'x': {words}" in err


def test_cpu_seconds_count_this_process_apart_from_the_others():
    before = runtime.cpu_seconds()
    if before is None:
        pytest.skip("no /proc/stat on this system")
    x = torch.randn(256, 256)
    for _ in range(200):
        x = torch.tanh(x @ x.T / 256)
    after = runtime.cpu_seconds()
    assert after[0] > before[0], "this process's CPU seconds grow with its work"
    assert after[1] >= before[1] - 0.05  # every other process's: a running total


@pytest.mark.parametrize("name", sorted(p.stem for p in race.ROOT.glob("bench/results/race*.json")))
def test_each_committed_race_renders_into_its_committed_markdown(name, tmp_path):
    """bench/results/NAME.md is what `race.py --render bench/results/NAME.json` writes: no stale figures."""
    results = race.ROOT / "bench" / "results"
    copy = tmp_path / f"{name}.json"
    copy.write_text((results / f"{name}.json").read_text())
    race.main(["--render", str(copy)])
    assert copy.with_suffix(".md").read_text() == (results / f"{name}.md").read_text()
    assert (results / f"{name}.png").exists()


def test_a_flow_teacher_s_race_names_euler_s_step():
    """On teachers/mnist16-flow boot's DDIM step is Euler's: the race records it and its page says Euler, never DDIM."""
    args = toy.parse_args(["--teacher", str(race.ROOT / "teachers" / "mnist16-flow"), "--out", "unused"])
    assert judging.step_name(toy.build(args, "cpu")[1]) == "Euler"
    r = json.loads((race.ROOT / "bench" / "results" / "race-corrector-flow.json").read_text())
    assert r["step"] == "Euler"
    text = race.report(r)
    assert "| Euler-64 (the reference) |" in text and "pairs of Euler-32" in text and "DDIM" not in text
    del r["step"]  # a race measured before the step was named: a DDIM teacher's
    assert "| DDIM-64 (the reference) |" in race.report(r)


def test_teacher_levels_that_would_overprint_share_one_label_that_says_what_they_share_once():
    """race-t2i-corrector-15's accuracy panel: DDIM-50 at 0.992 and DDIM-8 at 0.994 drew as one garbled "DDIM-80"."""
    levels = {"teacher DDIM-8": 0.994, "teacher DDIM-50": 0.992, "teacher DDIM-1": 0.5, "teacher DDIM-16": 0.51}
    assert pictures.level_labels(levels, near=0.03) == [(0.5, "teacher DDIM-1, 16"), (0.992, "teacher DDIM-50, 8")]
    assert pictures.level_labels(levels, near=0.001) == sorted((v, k) for k, v in levels.items())


def test_a_race_without_kd_describes_no_kd():
    """race-levers (--no-kd): BOOT and its variants only; the page names the variants' flags and says nothing of KD."""
    r = json.loads((race.ROOT / "bench" / "results" / "race-levers.json").read_text())
    assert all(row["method"] != "KD" for row in r["runs"])
    text = race.report(r)
    assert "KD" not in text and "knowledge distillation" not in text
    assert "constant weight (`--weighting constant`)" in text and "DDIM step (`--order 1`)" in text


def test_a_race_split_between_two_processes_runs_no_plain_boot_on_a_side():
    """--no-boot: one side of a race run as two processes (e.g. BOOT + corrector beside KD); nothing left is refused."""
    assert not race.parse_args(["--no-boot"]).boot
    with pytest.raises(SystemExit) as stopped:
        race.parse_args(["--no-boot", "--no-kd"])
    assert stopped.value.code == 2
    r = json.loads((race.ROOT / "bench" / "results" / "race-corrector-seed1-kd.json").read_text())
    r["runs"] = [row for row in r["runs"] if row["method"] == "KD"]
    text = race.report(r)
    assert "BOOT: train_toy's recipe" not in text and "\n- KD: 15% of the budget" in text
    assert "Who wins each budget: 15 min: one method in this race, no winner." in text
