"""Tests of bootkit/runtime.py, and of the runs of train_toy.py and train_sd.py that stand on it: atomic checkpoints, exact
resume after SIGTERM, SIGKILL at any moment, non-finite steps, loading that never unpickles objects, torchrun with
two CPU processes (gloo), and the one-line errors. Tiny settings, fixed seeds, no wall-clock assertions."""
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend with each other on a shared machine
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import boot
from bootkit import runtime
import train_sd
import train_toy
from test_train_sd import tiny_sd  # noqa: F401  (the fixture: a random SD-shaped pipeline in a temp folder)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the repository: its scripts, prompts.txt, teachers/
CPU = torch.device("cpu")
TIMEOUT = 300  # seconds: generous, for a loaded machine; only a hang reaches it


def run(*cmd, timeout=TIMEOUT):
    """A command in its own process, from the repository: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def error_lines(err: str) -> list:
    """The lines of stderr that are not tqdm's bar (an error glued to the bar is not a line of its own)."""
    return [line for line in err.splitlines() if line.strip() and "it/s]" not in line]


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------------------------------
# Checkpoints.


def tiny_weights(value=1.0):
    return {"student": {"w": torch.full((4, 3), value), "b": torch.zeros(3)}, "ema": {"w": torch.full((4, 3), -value)}}


def save(out, step, keep=2):
    return runtime.save_checkpoint(out, step, tiny_weights(step), {"step": step, "note": "x"}, keep=keep)


def test_checkpoint_round_trip(tmp_path):
    path = save(tmp_path, 3)
    assert path.name == "step-00000003"
    found, w, state = runtime.latest_checkpoint(tmp_path)
    assert found == path and state == {"step": 3, "note": "x"}
    for name, sd in tiny_weights(3).items():
        assert_identical(w[name], sd)


def test_a_killed_writes_leftover_is_ignored_then_cleaned(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000002-4242"  # what SIGKILL during a write leaves
    leftover.mkdir()
    save_file({"w": torch.ones(4, 3)}, leftover / "student.safetensors")
    (leftover / "state.pt").write_bytes(b"\x80\x02half a pick")
    assert [p.name for p in runtime.checkpoints(tmp_path)] == ["step-00000001"]
    assert runtime.latest_checkpoint(tmp_path)[0].name == "step-00000001"
    save(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]


def damage_truncate_weights(path):
    data = (path / "student.safetensors").read_bytes()
    (path / "student.safetensors").write_bytes(data[:len(data) // 2])


def damage_folder_for_file(path):
    for f in path.iterdir():
        f.unlink()
    (path / "state.pt").mkdir()


DAMAGES = {
    "truncated weights": damage_truncate_weights,
    "garbage state.pt": lambda path: (path / "state.pt").write_bytes(b"not a torch file"),
    "empty state.pt": lambda path: (path / "state.pt").write_bytes(b""),
    "state.pt missing": lambda path: (path / "state.pt").unlink(),
    "ema weights missing": lambda path: (path / "ema.safetensors").unlink(),
    "files gone, a folder for state.pt": damage_folder_for_file,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(damage, tmp_path, capsys):
    save(tmp_path, 1)
    DAMAGES[damage](save(tmp_path, 2))
    path, w, state = runtime.latest_checkpoint(tmp_path)
    assert path.name == "step-00000001" and state["step"] == 1 and set(w) == {"student", "ema"}
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "step-00000002 does not load" in warnings[0] and "older" in warnings[0]


def test_no_checkpoint_that_loads_is_none(tmp_path, capsys):
    assert runtime.latest_checkpoint(tmp_path) is None
    damage_truncate_weights(save(tmp_path, 1))
    assert runtime.latest_checkpoint(tmp_path) is None and "does not load" in capsys.readouterr().err


class Payload:
    """Unpickling this creates a file: the proof that an arbitrary object was (or was not) executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickled_object_in_state_pt_is_refused_never_run(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    save(tmp_path, 1)
    evil = save(tmp_path, 2)
    torch.save({"step": 2, "weights": ["student"], "x": Payload(marker)}, evil / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        runtime.load_checkpoint(evil)
    path, _, state = runtime.latest_checkpoint(tmp_path)
    assert path.name == "step-00000001" and state["step"] == 1
    assert not marker.exists()
    assert "refused" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_the_newest_keep_checkpoints_are_kept(keep, tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep=keep)
    assert [p.name for p in runtime.checkpoints(tmp_path)] == [f"step-{s:08d}" for s in range(6 - keep, 6)]


def test_pruning_never_trades_good_checkpoints_for_a_damaged_newer_one(tmp_path, capsys):
    """A resume skipped a damaged step-9: the run goes on from step 3, and must not prune its own checkpoints to
    keep the damaged one; reaching step 9 replaces it."""
    damage_truncate_weights(save(tmp_path, 9))
    for step in (1, 2, 3):
        save(tmp_path, step, keep=1)
    assert [p.name for p in runtime.checkpoints(tmp_path)] == ["step-00000003", "step-00000009"]
    assert runtime.latest_checkpoint(tmp_path)[0].name == "step-00000003"
    save(tmp_path, 9, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000009"]
    assert runtime.latest_checkpoint(tmp_path)[2]["step"] == 9


def test_the_same_step_saved_again_replaces_it_atomically(tmp_path):
    save(tmp_path, 1)
    path = runtime.save_checkpoint(tmp_path, 1, tiny_weights(7.0), {"step": 1}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    assert torch.equal(runtime.load_checkpoint(path)[0]["student"]["w"], torch.full((4, 3), 7.0))


# ----------------------------------------------------------------------------------------------------
# The trainer, on a tiny regression.


def make_trainer(out, *, init_seed=0, max_nonfinite=3, ckpt_every=2):
    torch.manual_seed(init_seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 / (1 + i))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    return runtime.Trainer(out=out, model=model, optimizer=optimizer, lr_schedule=schedule, ema=ema,
                           dist_info=runtime.Dist(0, 1, CPU), config={"seed": 0}, ckpt_every=ckpt_every,
                           max_nonfinite=max_nonfinite, log_every=1)


def regression(trainer, *, bad=(), on_step=None):
    """loss_fn: all randomness from runtime.step_generator; NaN at the step indices in `bad`."""
    def loss_fn(step):
        if on_step:
            on_step(step)
        x = torch.randn(16, 3, generator=runtime.step_generator(0, 0, step, CPU))
        loss = (trainer.model(x) - x.flip(1)).pow(2).mean()
        return loss * (float("nan") if step in bad else 1.0), {"loss": loss}
    return loss_fn


def full_state(trainer) -> dict:
    w, state = trainer.state_dicts()
    flat = {f"{name}.{k}": v for name, sd in w.items() for k, v in sd.items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        flat.update({f"adam.{i}.{k}": v for k, v in s.items()})
    flat["lr"] = torch.tensor(trainer.optimizer.param_groups[0]["lr"])
    flat["ema_n"] = trainer.ema.n_averaged
    return flat


def test_a_deadline_ends_the_run_before_its_next_step_as_at_its_last(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock[0])
    trainer = make_trainer(tmp_path / "budget", ckpt_every=100)
    advance = lambda step: clock.__setitem__(0, clock[0] + 1.0)  # each step takes a second
    path = trainer.fit(10, regression(trainer, on_step=advance), until=3.5)
    assert trainer.step == 4, "steps start at 0, 1, 2, 3 s; none at 4 s, past the deadline"
    assert path is not None and runtime.latest_checkpoint(tmp_path / "budget")[2]["step"] == 4
    events = [json.loads(line) for line in (tmp_path / "budget" / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "the budget ran out at step 4 of 10"
    straight = make_trainer(tmp_path / "straight")
    straight.fit(10, regression(straight, on_step=advance), until=None)
    assert straight.step == 10


def test_stopped_by_sigint_and_resumed_is_bit_identical(tmp_path, capsys):
    straight = make_trainer(tmp_path / "straight")
    straight.fit(7, regression(straight))

    stopped = make_trainer(tmp_path / "stopped")
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where the shell started us in the background
    with pytest.raises(SystemExit) as stop:  # the signal arrives mid-step: that step finishes, is saved, and exits
        stopped.fit(7, regression(stopped, on_step=lambda s: s == 2 and os.kill(os.getpid(), signal.SIGINT)))
    assert stop.value.code == 128 + signal.SIGINT
    assert "stopped by signal at step 3" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    resumed = make_trainer(tmp_path / "stopped", init_seed=1)  # other initial weights: all must come from the file
    assert resumed.resume() and resumed.step == 3
    resumed.fit(7, regression(resumed))
    assert_identical(full_state(resumed), full_state(straight))


def test_resume_refuses_another_recipe_in_one_line_and_takes_what_an_older_checkpoint_lacks(tmp_path, capsys):
    first = make_trainer(tmp_path)
    first.config = {"seed": 0, "batch_size": 8, "guidance_range": None}
    first.fit(2, regression(first))
    again = make_trainer(tmp_path)
    for change, line in [({"batch_size": 4}, "--batch-size 4: this run was started with 8 ("),
                         ({"guidance_range": (1.0, 4.0)}, "--guidance-range 1.0,4.0: this run was started with none ("),
                         ({"seed": None}, "--seed none: this run was started with 0 (")]:
        again.config = {**first.config, **change}
        with pytest.raises(runtime.UsageError) as refused:
            again.resume(same_keys=sorted(again.config))
        assert str(refused.value).startswith(line) and "step-00000002" in str(refused.value)
        assert "\n" not in str(refused.value) and again.step == 0
    again.config = {**first.config, "clip": 1.0}  # a key the checkpoint does not record: taken, and said
    capsys.readouterr()
    assert again.resume(same_keys=sorted(again.config)) and again.step == 2
    assert "does not record --clip (an older version wrote it); going on with 1.0" in capsys.readouterr().out


@pytest.mark.parametrize("saved_with_schedule", [True, False])
def test_resume_refuses_a_learning_rate_schedule_added_or_dropped(saved_with_schedule, tmp_path):
    """Not a KeyError: a schedule resumes with its state, and a run without one would keep a decayed lr."""
    first = make_trainer(tmp_path)
    first.lr_schedule = first.lr_schedule if saved_with_schedule else None
    first.fit(2, regression(first))
    again = make_trainer(tmp_path)
    again.lr_schedule = None if saved_with_schedule else again.lr_schedule
    with pytest.raises(runtime.UsageError, match="was trained (with|without) a learning-rate schedule, and this run "
                                                 f"has {'none' if saved_with_schedule else 'one'}"):
        again.resume()


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    trainer = make_trainer(tmp_path, max_nonfinite=3, ckpt_every=2)
    before = {}
    record = lambda s: before.setdefault(s, {k: v.clone() for k, v in trainer.student.state_dict().items()})
    with pytest.raises(runtime.RunError) as error:  # step indices: 2 alone, then 5, 6, 7 in a row
        trainer.fit(20, regression(trainer, bad={2, 5, 6, 7}, on_step=record))
    message = str(error.value)
    assert "3 non-finite losses or gradients in a row (steps 6 to 8" in message
    assert message.endswith("last good checkpoint: " + str(tmp_path / "checkpoints" / "step-00000004"))
    assert_identical(before[3], before[2])  # a skipped step leaves the weights as they were
    assert trainer.step == 8 and trainer.skipped == 4

    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the log: not JSON")) for line in lines]
    events = [r for r in records if "event" in r]
    assert [(r["step"], r["skipped"]) for r in events] == [(3, 1), (6, 2), (7, 3), (8, 4)]
    assert [r for r in records if r.get("step") == 3 and "loss" in r][0]["skipped"] == 1
    # No checkpoint during the streak (step 6 would have been one); the last good one loads, as it was.
    assert [p.name for p in runtime.checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    path, w, state = runtime.latest_checkpoint(tmp_path)
    assert path.name == "step-00000004" and state["step"] == 4 and state["skipped"] == 1
    assert_identical(w["student"], before[4])


def test_a_run_that_starts_non_finite_says_no_checkpoint_yet(tmp_path):
    trainer = make_trainer(tmp_path, max_nonfinite=2)
    with pytest.raises(runtime.RunError, match="last good checkpoint: none written yet"):
        trainer.fit(10, regression(trainer, bad=set(range(10))))


def test_a_nan_loss_with_finite_gradients_is_skipped_too(tmp_path):
    trainer = make_trainer(tmp_path, max_nonfinite=5)
    w0 = {k: v.clone() for k, v in trainer.student.state_dict().items()}

    def loss_fn(step):  # the value overflows, its gradient does not
        loss = trainer.model(torch.ones(1, 3)).sum() + torch.tensor(float("inf"))
        return loss, {"loss": loss}
    with pytest.raises(runtime.RunError):
        trainer.fit(10, loss_fn)
    assert_identical(trainer.student.state_dict(), w0)


def test_a_run_that_ends_with_skipped_steps_says_so(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_nonfinite=3)
    trainer.fit(6, regression(trainer, bad={1, 4, 5}))
    assert "warning: 3 of 6 steps skipped for a non-finite loss or gradient" in capsys.readouterr().out


def test_the_same_step_is_not_written_twice(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(2, regression(trainer))  # the final save at step 2
    path = trainer.saved[1]
    inode = path.stat().st_ino
    assert trainer.save() == path and path.stat().st_ino == inode
    again = make_trainer(tmp_path)
    assert again.resume() and again.fit(2, regression(again)) == path and path.stat().st_ino == inode


# ----------------------------------------------------------------------------------------------------
# Errors, flags, devices.


@pytest.mark.parametrize("rank", [None, "0", "1"])
def test_cli_errors_are_one_line_and_a_status(rank, monkeypatch, capsys):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    for error, status in ((runtime.UsageError("bad --flag"), 2), (runtime.RunError("it broke"), 1)):
        def main():
            raise error
        with pytest.raises(SystemExit) as stop:
            runtime.cli(main)()
        assert stop.value.code == status
        err = capsys.readouterr().err
        assert err == ("" if rank == "1" else f"error: {error}\n")  # torchrun: rank 0 alone prints it


@pytest.mark.parametrize("ends", ["returns", "UsageError", "RunError"])
def test_cli_leaves_the_process_group_before_the_interpreter_exits(ends, tmp_path):
    """Gloo's threads alive at interpreter exit abort the process (SIGABRT): one rank of a torchrun test did so
    after training, and torchrun killed rank 0 in its evaluation. A one-process gloo group stands in for torchrun's."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        def main():
            torch.distributed.all_reduce(torch.ones(1))  # the group worked
            if ends != "returns":
                raise getattr(runtime, ends)("stop")
            return "done"
        if ends == "returns":
            assert runtime.cli(main)() == "done"
        else:
            with pytest.raises(SystemExit):
                runtime.cli(main)()
        assert not torch.distributed.is_initialized()
    finally:
        runtime.leave_process_group()


WORKER_END = """
import atexit, os, sys, torch
sys.path.insert(0, sys.argv[1])
from bootkit import runtime
torch.distributed.init_process_group("gloo", init_method=f"file://{sys.argv[2]}", rank=0, world_size=1)
os.environ["WORLD_SIZE"] = "2"  # as torchrun sets it for each of two workers
atexit.register(lambda: print("finalized"))
def main():
    torch.distributed.all_reduce(torch.ones(1))
    print("trained", end="")  # still in the pipe's buffer when main ends
    if sys.argv[3] != "returns":
        raise getattr(runtime, sys.argv[3])("stop")
runtime.cli(main)()
"""


@pytest.mark.parametrize("ends, status", [("returns", 0), ("UsageError", 2), ("RunError", 1)])
def test_a_torchrun_worker_ends_without_the_interpreter_s_finalization(ends, status, tmp_path):
    """torch's C++ teardown at finalization aborted one rank of train_toy in about six torchrun runs here, even
    after destroy_process_group, and torchrun then killed rank 0 mid-evaluation: a worker exits at once (atexit
    handlers do not run), with its status and everything it printed."""
    (tmp_path / "worker.py").write_text(WORKER_END)
    status_seen, out, err = run(tmp_path / "worker.py", ROOT, tmp_path / "rendezvous", ends)
    assert status_seen == status, err
    assert out == "trained"
    assert err == ("" if ends == "returns" else "error: stop\n")


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "1e400", "abc"])
def test_positive_flags_must_be_positive_and_finite(text, capsys):
    p = runtime.ArgumentParser(prog="train")
    p.add_argument("--lr", type=runtime.positive(float))
    with pytest.raises(SystemExit) as stop:
        p.parse_args(["--lr", text])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--lr" in err[0] and "(see --help)" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name, expected", [("cuda", "torch sees no CUDA device"), ("cuda:1", "no CUDA device"),
                                            ("tpu7", "unknown --device")])
def test_devices_that_are_not_there(name, expected):
    with pytest.raises(runtime.UsageError, match=expected):
        runtime.setup(name)


def test_step_generators_differ_by_seed_rank_and_step_and_repeat_exactly():
    draw = lambda *key: torch.randn(4, generator=runtime.step_generator(*key, CPU))
    assert torch.equal(draw(0, 0, 5), draw(0, 0, 5))
    keys = [(0, 0, 5), (1, 0, 5), (0, 1, 5), (0, 0, 6)]
    assert len({tuple(draw(*k).tolist()) for k in keys}) == len(keys)


# ----------------------------------------------------------------------------------------------------
# train_toy.py end to end: 2-D mixture, a tiny MLP, every recipe flag given (the defaults may change).


def toy_args(out, *extra):
    return ["--out", str(out), "--device", "cpu", "--data", "mixture", "--steps", "40", "--batch-size", "64",
            "--width", "32", "--depth", "2", "--lr", "3e-3", "--warmup", "4", "--bootstrap-steps", "8", "--jump", "2",
            "--ema", "0.9", "--seed", "0", "--eval-samples", "256", "--reference-steps", "64", *map(str, extra)]


def final_weights(out: Path) -> dict:
    path = runtime.checkpoints(out)[-1]
    return {name: load_file(path / f"{name}.safetensors") for name in ("student", "ema")}


@pytest.fixture(scope="module")
def straight_toy(tmp_path_factory):
    """An uninterrupted run (in this process), the reference of the resume and crash tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    torch.randn(3)  # the global RNG state differs from a fresh process's: --seed alone must set the initial weights
    train_toy.main(toy_args(out))
    return out


def test_toy_stopped_by_sigterm_and_resumed_ends_bit_identical(straight_toy, tmp_path, monkeypatch, capsys):
    out, calls, loss = tmp_path / "run", [], boot.boot_loss

    def loss_then_sigterm(*args, **kwargs):  # the real loss; SIGTERM arrives while step 10 is computed
        calls.append(1)
        if len(calls) == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(*args, **kwargs)
    monkeypatch.setattr(boot, "boot_loss", loss_then_sigterm)
    with pytest.raises(SystemExit) as stop:
        train_toy.main(toy_args(out))
    assert stop.value.code == 128 + signal.SIGTERM
    assert "stopped by signal at step 10" in capsys.readouterr().out
    assert [p.name for p in runtime.checkpoints(out)] == ["step-00000010"] and not (out / "metrics.json").exists()

    monkeypatch.setattr(boot, "boot_loss", loss)
    torch.randn(5)  # another global RNG state again
    train_toy.main(toy_args(out, "--resume"))
    assert "resumed from" in capsys.readouterr().out
    for name, w in final_weights(straight_toy).items():
        assert_identical(final_weights(out)[name], w)
    assert_identical(load_file(out / "student.safetensors"), load_file(straight_toy / "student.safetensors"))
    metric = lambda run: json.loads((run / "metrics.json").read_text())["student_rmse"]
    assert metric(out) == metric(straight_toy)


# train_toy.py in a process that SIGKILLs itself at the n-th checkpoint operation of one kind (KILL_STAGE, KILL_AT):
# "write" (a weights or state file, an fsync), "publish" (a rename: the new checkpoint into place, an old one out
# of sight), "prune" (deleting a folder: killed after its first file is gone, as if in the middle of it).
KILLED_AT = """
import os, shutil, signal, sys, torch, train_toy
from bootkit import runtime
from pathlib import Path
stage, n, calls = os.environ["KILL_STAGE"], int(os.environ["KILL_AT"]), []
def kill_at_nth(kind, fn, where):
    def op(*args, **kwargs):
        path = Path(args[where])
        files = [path]  # for "prune", the files in the folder: an empty or missing one is not counted
        if kind == "prune":
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        if "checkpoints" in path.parts and files:
            calls.append(kind)
            if kind == stage and calls.count(kind) == n:
                if kind == "prune":
                    files[0].unlink()
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return op
runtime.save_file, torch.save = kill_at_nth("write", runtime.save_file, 1), kill_at_nth("write", torch.save, 1)
runtime._fsync = kill_at_nth("write", runtime._fsync, 0)
Path.rename, shutil.rmtree = kill_at_nth("publish", Path.rename, 0), kill_at_nth("prune", shutil.rmtree, 0)
train_toy.main(sys.argv[1:])
"""


def wait_for(condition, what, timeout=TIMEOUT):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_toy_sigkill_at_any_moment_leaves_a_checkpoint_that_loads(straight_toy, tmp_path):
    out, rng = tmp_path / "run", random.Random(0)
    args = toy_args(out, "--ckpt-every", "1")
    # A checkpoint is 8 writes, 1 or 2 renames and 1 folder deleted (with --ckpt-every 1, from the third on): each
    # kill lands within the first 4 checkpoints of its process; the first after one is complete. The timer kills
    # come 0 to 100 ms after a new checkpoint appeared: anywhere, in a write or between steps.
    kills = [("write", rng.randint(9, 32)), ("publish", rng.randint(1, 6)), ("prune", rng.randint(1, 3)),
             ("timer", rng.uniform(0, 0.1)), ("timer", rng.uniform(0, 0.1))]
    for i, (how, when) in enumerate(kills):
        env = {**os.environ, "KILL_STAGE": how, "KILL_AT": str(when if how != "timer" else 0)}
        with open(tmp_path / f"stderr-{i}", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", KILLED_AT, *args, *(["--resume"] if i else [])], cwd=ROOT,
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)
            if how == "timer":
                seen = {p.name for p in runtime.checkpoints(out)}
                wait_for(lambda: proc.poll() is not None or {p.name for p in runtime.checkpoints(out)} - seen,
                         "a new checkpoint")
                time.sleep(when)
                proc.kill()
            proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"stderr-{i}").read_text()
        found = runtime.latest_checkpoint(out)
        assert found is not None, f"kill {i} ({how} {when}): no checkpoint loads"
        path, w, state = found
        assert set(w) == {"student", "ema"} and state["step"] == int(path.name[5:])
        for older in runtime.checkpoints(out):  # every visible checkpoint is whole; only '.'-named ones may not be
            runtime.load_checkpoint(older)
    status, _, err = run("train_toy.py", *args, "--resume", "--ckpt-every", "10")  # may change on resume
    assert status == 0, err
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
    for name, w in final_weights(straight_toy).items():  # and nothing was lost
        assert_identical(final_weights(out)[name], w)


def test_toy_nonfinite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    status, _, err = run("train_toy.py", *toy_args(out, "--lr", "1e30", "--warmup", "0", "--ckpt-every", "1"))
    assert status == 1 and "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: 5 non-finite losses or gradients in a row"), err
    good = Path(lines[0].split("last good checkpoint: ")[1])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("event", "").startswith("non-finite")]
    assert [r["skipped"] for r in skipped] == [1, 2, 3, 4, 5]
    path, w, state = runtime.latest_checkpoint(out)
    assert path == good and state["step"] == skipped[0]["step"] - 1 and state["skipped"] == 0
    assert all(torch.isfinite(v).all() for sd in w.values() for v in sd.values())


def toy_fails(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        train_toy.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    return err[0]


def test_toy_bad_inputs_are_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert "--lr" in toy_fails(toy_args(out, "--lr", "inf"), capsys)
    assert "--data" in toy_fails(toy_args(out, "--data", "moons"), capsys)
    assert "--ema" in toy_fails(toy_args(out, "--ema", "1"), capsys)
    assert "--jump" in toy_fails(toy_args(out, "--jump", "9"), capsys)
    if not torch.cuda.is_available():
        assert "no CUDA device" in toy_fails(toy_args(out, "--device", "cuda"), capsys)
    assert not out.exists()
    train_toy.main(toy_args(out, "--steps", "2"))
    capsys.readouterr()
    assert "is not empty; add --resume" in toy_fails(toy_args(out, "--steps", "4"), capsys)
    line = toy_fails(toy_args(out, "--steps", "4", "--width", "16", "--resume"), capsys)
    assert line.startswith("error: --width 16: this run was started with 32 (") and "--overwrite" in line
    assert [p.name for p in runtime.checkpoints(out)] == ["step-00000002"]


def test_toy_resume_skips_a_damaged_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train_toy.main(toy_args(out, "--steps", "4", "--ckpt-every", "2"))
    damage_truncate_weights(out / "checkpoints" / "step-00000004")
    train_toy.main(toy_args(out, "--steps", "4", "--resume"))
    captured = capsys.readouterr()
    assert "step-00000004 does not load" in captured.err and "resumed from" in captured.out
    assert "at step 2" in captured.out and runtime.latest_checkpoint(out)[2]["step"] == 4

    alone = tmp_path / "alone"  # its only checkpoint damaged: --resume says that it starts afresh
    train_toy.main(toy_args(alone, "--steps", "2"))
    damage_truncate_weights(alone / "checkpoints" / "step-00000002")
    capsys.readouterr()
    train_toy.main(toy_args(alone, "--steps", "2", "--resume"))
    assert f"--resume: no checkpoint in {alone} loads; starting from step 0" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# torchrun: 2 CPU processes with gloo.


def torchrun(script, *args):
    return run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args)


def test_toy_torchrun_two_processes_match_one_with_the_same_total_batch(tmp_path):
    recipe = ["--steps", "150", "--width", "64", "--lr", "3e-3", "--warmup", "10", "--ema", "0", "--ckpt-every", "100"]
    status, stdout, err = torchrun("train_toy.py", *toy_args(tmp_path / "ddp", *recipe, "--batch-size", "128"))
    assert status == 0, err
    status, _, err = run("train_toy.py", *toy_args(tmp_path / "one", *recipe, "--batch-size", "256"))
    assert status == 0, err

    ddp = tmp_path / "ddp"
    records = [json.loads(line) for line in (ddp / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 150] and records[-1] == {"step": 150, "ranks_identical": True}
    assert stdout.count("BOOT:") == 1 and stdout.count("wrote") == 1  # rank 0 alone prints and writes
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step-00000100", "step-00000150"]
    m = {run: json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("ddp", "one")}
    assert m["ddp"]["config"]["batch_size"] == 128
    assert abs(m["ddp"]["student_rmse"] - m["one"]["student_rmse"]) < 0.1 * m["one"]["student_rmse"]
    assert m["ddp"]["student_rmse"] < 0.6 * m["ddp"]["teacher_ddim_rmse"]["1"]  # and it did learn


RESUME_ON_SPLIT_FOLDERS = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from bootkit import runtime
d = runtime.setup("cpu")
model = torch.nn.Linear(3, 3)
trainer = runtime.Trainer(out=f"{sys.argv[1]}/rank{d.rank}", model=model, dist_info=d, config={},
                          optimizer=torch.optim.Adam(model.parameters()))
runtime.cli(trainer.resume)()
"""


def test_torchrun_ranks_that_see_different_checkpoints_stop(tmp_path):
    """Multi-node runs with --out on local disks: rank 0 finds a checkpoint, rank 1 none; both must stop."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    runtime.save_checkpoint(tmp_path / "rank0", 5, {"student": model.state_dict()},
                            {"step": 5, "skipped": 0, "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
                             "config": {}})
    (tmp_path / "script.py").write_text(RESUME_ON_SPLIT_FOLDERS)
    status, _, err = torchrun(tmp_path / "script.py", tmp_path, ROOT)
    assert status != 0
    assert err.count("error: --resume: the processes found checkpoints of different steps") == 1, err


def test_sd_torchrun_two_processes(tiny_sd, tmp_path):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na dog on a hill\nblue sky\n")
    out = tmp_path / "run"
    status, stdout, err = torchrun("train_sd.py", "--teacher", tiny_sd, "--prompts", prompts, "--out", out,
                                   "--device", "cpu", "--resolution", "16", "--batch-size", "2", "--steps", "2",
                                   "--bootstrap-steps", "4", "--ckpt-every", "1", "--validate-every", "2",
                                   "--dtype", "fp32", "--guidance-range", "1,4")
    assert status == 0, err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 2] and records[-1]["ranks_identical"] is True
    assert sorted(p.name for p in out.iterdir()) == ["boot_sd.json", "checkpoints", "log.jsonl", "pipeline",
                                                     "validation"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["log.jsonl", "step-00000002.png"]
    assert stdout.count("student in") == 1
    assert runtime.latest_checkpoint(out)[2]["step"] == 2


def test_sd_resume_with_other_settings_is_refused(tiny_sd, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n")
    args = ["--teacher", tiny_sd, "--prompts", str(prompts), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--resolution", "16", "--batch-size", "1", "--bootstrap-steps", "4", "--steps", "1", "--dtype", "fp32",
            "--validate-every", "1000"]
    train_sd.main(args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_sd.main(args + ["--resume", "--guidance-range", "1,4", "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --guidance-range 1.0,4.0: this run was started with none ("), err


def test_each_terms_gradient_norm_is_logged_and_the_step_uses_their_sum(tmp_path):
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
    trainer = runtime.Trainer(out=tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                              dist_info=runtime.Dist(0, 1, CPU), config={}, clip=0, log_every=2)

    def loss_fn(step):
        w = model.weight
        linear, square = 2 * w.sum(), 0.5 * w.pow(2).sum()  # gradients (2, 2) and w
        return linear + square, {"loss": linear + square, "terms": {"linear": linear, "square": square}}
    trainer.fit(3, loss_fn)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and "terms" not in records[0]
    # Logged before the step's update: w = (3, 4) - 0.1 (2 + w) after step 1, then the same again.
    w1 = torch.tensor([3.0, 4.0]) * 0.9 - 0.2
    assert records[0]["grad_norm_linear"] == pytest.approx(8 ** 0.5)
    assert records[0]["grad_norm_square"] == pytest.approx(w1.norm().item())
    assert records[1]["grad_norm_square"] == pytest.approx((w1 * 0.9 - 0.2).norm().item())
    assert torch.allclose(model.weight, ((w1 * 0.9 - 0.2) * 0.9 - 0.2)[None])


def test_extra_networks_are_checkpointed_and_resumed_with_the_student(tmp_path):
    def make(seed):
        torch.manual_seed(seed)
        model, fake = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        fake_opt = torch.optim.Adam(fake.parameters(), lr=1e-2)
        trainer = runtime.Trainer(out=tmp_path, model=model, optimizer=opt, dist_info=runtime.Dist(0, 1, CPU),
                                  config={}, extras={"fake": (fake, fake_opt)})

        def loss_fn(step):
            x = torch.randn(4, 2, generator=runtime.step_generator(0, 0, step, CPU))
            fake_loss = (fake(x) - x).pow(2).mean()
            fake_opt.zero_grad()
            fake_loss.backward()
            fake_opt.step()
            loss = (model(x) - fake(x).detach()).pow(2).mean()
            return loss, {"loss": loss}
        return trainer, fake, fake_opt, loss_fn
    trainer, fake, fake_opt, loss_fn = make(0)
    trainer.fit(2, loss_fn)
    again, fake2, fake_opt2, loss_fn2 = make(1)
    assert again.resume() and again.step == 2
    assert all(torch.equal(a, b) for a, b in zip(fake.state_dict().values(), fake2.state_dict().values()))
    assert fake_opt2.state_dict()["state"][0]["step"] == 2
    trainer.fit(4, loss_fn)
    again.fit(4, loss_fn2)
    assert all(torch.equal(a, b) for a, b in zip(fake.state_dict().values(), fake2.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), again.model.state_dict().values()))


def test_the_timed_schedule_follows_the_seconds_spent_not_the_steps(monkeypatch):
    """runtime.timed_warmup_cosine, the races' learning rate: linear warm-up over warmup_share of the budget's seconds,
    then a cosine to 0 at the deadline, wherever the steps fall; 0 after it."""
    from types import SimpleNamespace
    clock = [1000.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = runtime.timed_warmup_cosine(optimizer, start=1000.0, seconds=100.0, warmup_share=0.1)
    cosine = lambda u: 0.5 * (1 + math.cos(math.pi * u))
    for spent, steps, expected in [(5.0, 1, 0.5 * cosine(0.05)), (10.0, 1, cosine(0.1)), (50.0, 7, cosine(0.5)),
                                   (75.0, 1, cosine(0.75)), (100.0, 1, 0.0), (130.0, 3, 0.0)]:
        clock[0] = 1000.0 + spent
        for _ in range(steps):  # how many steps were taken does not matter, only the seconds
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * expected, abs=1e-12), spent
