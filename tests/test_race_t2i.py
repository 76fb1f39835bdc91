"""Tests of bench/race.py's text-to-image race (bench/race_t2i.py): one --quick race on teachers/mnist-t2i on the CPU,
checked for behaviour (both methods per budget, teacher calls as counted, the report from its JSON), not for speed
or who wins."""
import json
import math
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach the hub
os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend with each other on a shared machine

import pytest
import torch

import race
import race_t2i
import train_sd
from bootkit import racing

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "teachers" / "mnist-t2i"
CORRECTED, KD_CORRECTED = "BOOT + corrector", "KD + corrector"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("race-t2i") / "race-t2i.json"
    race.main(["--teacher", str(TEACHER), "--quick", "--json", str(path), "--seed", "0",
               "--variant", f"{CORRECTED}=--corrector-weight 1 --corrector-batch 2",
               "--kd-variant", f"{KD_CORRECTED}=--corrector-weight 1 --corrector-batch 2"])
    return json.loads(path.read_text()), path


def _judged(cells: dict):
    assert list(cells) == ["1", "2", "3", "5"]
    for cell in cells.values():
        assert 0 <= cell["accuracy"] <= 1 and math.isfinite(cell["fd"]) and cell["fd"] > 0


def test_the_quick_race_runs_every_method_per_budget_judged_alike(quick):
    r, _ = quick
    assert r["race"] == "text-to-image" and r["budgets_min"] == race_t2i.QUICK["budgets"]
    assert [(row["budget_min"], row["method"]) for row in r["runs"]] == [
        (b, m) for b in race_t2i.QUICK["budgets"] for m in ("BOOT", CORRECTED, "KD", KD_CORRECTED)]
    assert [race_t2i.kind(row) for row in r["runs"][:4]] == ["boot", "boot", "kd", "kd"]
    assert list(r["teacher_ddim"]) == ["8", "50"]
    for row in r["teacher_ddim"].values():
        _judged(row)
    for row in r["runs"]:
        _judged(row["judged"])
        assert row["steps_done"] >= 1 and row["seconds"] > 0
        assert row["batch"] == race_t2i.QUICK["batch"] and row["lr"] == train_sd.LR_SMALL  # the same recipe


def test_teacher_calls_are_what_each_method_made(quick):
    """Counted as made (a counting teacher in the race for KD, in train_sd.py for BOOT) against what each recipe
    calls. KD: its pairs' guided DDIM-k (2 rows a call) and the probe that timed a call; BOOT: its steps, each
    example 2 guided calls (Heun; the rows stepping to t = 0 ride along in the batched call), 2 rows each; with the
    corrector, one guided call (the real score) a corrector sample more, KD's and BOOT's alike."""
    r, _ = quick
    for row in r["runs"]:
        corrector = 2 * row["steps_done"] * 2 if row["method"] in (CORRECTED, KD_CORRECTED) else 0  # --corrector-batch 2
        if race_t2i.kind(row) == "kd":
            assert row["probe_rows"] == 2 * race_t2i.QUICK["pair_batch"] and row["k"] in racing.KD_KS
            assert row["teacher_calls"] == row["pairs"] * row["k"] * 2 + row["probe_rows"] + corrector
            assert row["pairs"] % race_t2i.QUICK["pair_batch"] == 0
        else:
            assert row["order"] == 2
            assert row["teacher_calls"] == row["steps_done"] * row["batch"] * 2 * 2 + corrector


def test_a_text_to_image_teacher_chooses_the_text_race():
    assert race_t2i.is_text_teacher(TEACHER) and not race_t2i.is_text_teacher(ROOT / "teachers" / "mnist16")


def test_the_markdown_renders_from_the_json(quick):
    r, path = quick
    written = path.with_suffix(".md").read_text()
    path.with_suffix(".md").unlink()
    path.with_suffix(".png").unlink()
    race.main(["--render", str(path)])
    assert path.with_suffix(".md").read_text() == written and path.with_suffix(".png").stat().st_size > 0
    assert json.loads(path.read_text()) == r  # rendering measures nothing and leaves the figures alone
    assert "| teacher DDIM-8 |" in written and "| teacher DDIM-50 |" in written
    assert written.count("| BOOT |") == written.count("| KD |") == written.count(f"| {CORRECTED} |") == len(r["budgets_min"])
    assert written.count(f"| {KD_CORRECTED} | ") == len(r["budgets_min"]) and "pairs of DDIM-" in written.split(f"| {KD_CORRECTED} | ")[1]
    assert f"{CORRECTED}: the same with `--corrector-weight 1 --corrector-batch 2`" in written
    assert f"{KD_CORRECTED}: KD with train_sd's `--corrector-weight 1 --corrector-batch 2`" in written
    assert "Who wins each budget at w = 3: " in written and "other processes' CPU time" in written


def test_a_bad_variant_is_refused_by_train_sd_before_the_race_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        race.main(["--teacher", str(TEACHER), "--quick", "--json", str(tmp_path / "r.json"),
                   "--variant", "bad=--corrector-weight -1"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.splitlines()[-1] == "error: --variant 'bad': --corrector-weight -1.0: must be 0 or more"
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flags, why", [
    ("--corrector-weight -1", "--corrector-weight -1.0: must be 0 or more"),
    ("--corrector-batch 0", "argument --corrector-batch: must be positive and finite, got 0"),
    ("--corrector-weight 1 --lr 1e-4", "--lr 1e-4: a text-to-image KD variant takes the corrector's flags only"),
])
def test_a_bad_kd_variant_is_refused_in_one_line_before_the_race_starts(capsys, flags, why):
    with pytest.raises(SystemExit) as stop:
        race.parse_args(["--teacher", str(TEACHER), "--kd-variant", "good=--corrector-weight 1", "--kd-variant", f"bad={flags}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and f"argument --kd-variant 'bad': {why}" in err, err


def test_rows_are_told_apart_by_their_pairs():
    """KD's rows, its variants' too, count the pairs they trained on; BOOT's have none."""
    assert race_t2i.kind({"pairs": 64}) == "kd" and race_t2i.kind({"steps_done": 3}) == "boot"
