"""Tests of bootkit/evaluation.py's error map on the exact mixture teacher, in float64: where on the grid a
student's error enters, pinned by students that are perfect, or wrong at one grid time only."""
import contextlib
import io
import math
import os

os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

import boot
from bootkit import evaluation, exact, metrics, pictures

torch.set_num_threads(1)
N = 8
SCHEDULE = boot.Schedule.cosine()
TEACHER = exact.toy_teacher("mixture", SCHEDULE)
GRID = boot.time_grid(SCHEDULE, N, spacing="quadratic")


def on_the_fixed_point(order, wrong_at=(), by=0.1):
    """A student that returns its fixed point's row for its grid time (fixed_point of the noises it is given, so
    that it works in batches), plus `by` at the grid indices wrong_at."""
    def student(e, t, c=None):
        k = int((GRID - t[0].double()).abs().argmin())
        assert torch.all(t == t[0]), "one grid time per call"
        return boot.fixed_point(TEACHER, e, schedule=SCHEDULE, grid=GRID, order=order)[k] + (by if k in wrong_at else 0)
    return student


def noises(n=64, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def error_map(student, order, eps, **kw):
    return evaluation.error_map(TEACHER, SCHEDULE, student, eps, grid=GRID, order=order, per_pixel=False, **kw)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("batch", [None, 16])
def test_a_student_on_its_fixed_point_has_no_error_anywhere_and_no_residual_on_any_hop(order, batch):
    e = error_map(on_the_fixed_point(order), order, noises(), batch=batch)
    assert e["t"] == GRID.tolist() and len(e["to_fixed_point"]) == len(e["one_hop"]) == N + 1
    assert e["one_hop"][0] is None and e["noises"] == 64 and e["order"] == order
    assert e["rmse"] == "per-sample (Euclidean)"
    assert max(e["to_fixed_point"]) < 1e-9 and max(e["one_hop"][1:]) < 1e-9
    assert e["to_fixed_point"][N] == 0, "at k = N the exact y_T: 0 by construction"


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("j", range(N))
def test_a_student_wrong_at_one_grid_time_shows_there_and_on_the_two_hops_that_touch_it(order, j):
    """Wrong by 0.1 in both coordinates at t_j alone: to_fixed_point only at j, one_hop only at hop j (its signal
    stepped to t_{j-1}) and hop j + 1 (compared with the step from the correct t_{j+1}); an off-by-one fails."""
    e = error_map(on_the_fixed_point(order, wrong_at={j}), order, noises())
    off = 0.1 * math.sqrt(2)  # per-sample Euclidean RMSE of a shift by 0.1 in each of 2 coordinates
    assert [k for k, v in enumerate(e["to_fixed_point"]) if v > 1e-9] == [j]
    assert e["to_fixed_point"][j] == pytest.approx(off, rel=1e-12)
    assert [k for k, v in enumerate(e["one_hop"]) if v is not None and v > 1e-9] == [k for k in (j, j + 1) if k >= 1]
    assert e["one_hop"][j + 1] == pytest.approx(off, rel=1e-12), "its output against the step from the exact row"


@pytest.mark.parametrize("order", [1, 2])
def test_the_error_map_is_metrics_rmse_of_the_students_signals_and_the_training_step_in_batches(order):
    torch.manual_seed(0)
    student = boot.MLPStudent(dim=2, width=16, depth=2).double()
    eps, calls = noises(40, seed=1), []
    counting = lambda x, t, c=None: calls.append(len(x)) or TEACHER(x, t, c)
    e = evaluation.error_map(counting, SCHEDULE, student, eps, grid=GRID, order=order, per_pixel=True, batch=16)
    assert len(calls) == 3 * 2 * (order * N - (order == 2)), "3 batches; fixed_point's steps, then one from each t_k"
    ys = boot.fixed_point(TEACHER, eps, schedule=SCHEDULE, grid=GRID, order=order)
    with torch.no_grad():
        g = [student(eps, GRID[k].float().expand(40)) for k in range(N)] + [ys[N]]
    for k in range(N + 1):
        assert e["to_fixed_point"][k] == pytest.approx(metrics.rmse(g[k], ys[k], True), rel=1e-9), k
    for k in (1, N // 2, N):  # the hop is boot's training target: bootstrap_target from the student at t_k
        config = boot.BootConfig(order=order)
        target, s = boot.bootstrap_target(student, TEACHER, eps, schedule=SCHEDULE, grid=GRID,
                                          k=torch.full((40,), k), config=config)
        assert torch.all(s == GRID[k - 1])
        assert e["one_hop"][k] == pytest.approx(metrics.rmse(g[k - 1], target, True), rel=1e-9), k
    unbatched = evaluation.error_map(TEACHER, SCHEDULE, student, eps, grid=GRID, order=order, per_pixel=True)
    assert unbatched["to_fixed_point"] == pytest.approx(e["to_fixed_point"], rel=1e-12)
    assert unbatched["one_hop"][1:] == pytest.approx(e["one_hop"][1:], rel=1e-12)


def printed(e):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluation.print_error_map(e)
    return out.getvalue()


def test_the_summary_says_whether_the_samples_error_is_inherited_or_made_at_the_last_hop():
    eps = noises()
    lines = printed(error_map(on_the_fixed_point(2), 2, eps)).splitlines()
    assert len(lines) == 2 and "the sample is on its fixed point" in lines[0]
    last = printed(error_map(on_the_fixed_point(2, wrong_at={0}), 2, eps))
    assert "made at the last hop" in last and "largest 0.1414 at k = 0" in last and "t_1 already carries 0%" in last
    assert "largest 0.1414 on hop k = 1 -> 0" in last
    inherited = printed(error_map(on_the_fixed_point(2, wrong_at=set(range(N))), 2, eps))
    assert "inherited down the chain" in inherited and f"half of it reached by k = {N - 1}" in inherited


def test_the_picture_is_drawn_for_values_that_span_decades_with_exact_zeros_and_no_hop_at_0(tmp_path):
    e = error_map(on_the_fixed_point(1, wrong_at={0}, by=1e-3), 1, noises())
    e["to_fixed_point"][3] = 0.5  # values that span decades: a log axis, the exact zeros left off it
    pictures.plot_error_map(tmp_path / "error_map.png", e, "exact mixture teacher")
    from PIL import Image
    assert Image.open(tmp_path / "error_map.png").size == (880, 506)
