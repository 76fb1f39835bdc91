"""bootkit/runtime.py: what keeps long runs alive, shared by train_toy.py and train_sd.py.

- Checkpoints: weights in safetensors, optimizer/schedule/EMA/step in a bundle that loads with
  torch.load(weights_only=True); each written to a temporary folder, then renamed (atomic), every
  --ckpt-every steps and on SIGINT/SIGTERM. A run killed at any moment leaves a loadable latest one.
- Exact resume: the noise of step i on rank r comes from its own generator seeded by (seed, r, i), so a
  resumed run draws what the uninterrupted run would have drawn.
- Non-finite loss or gradients: the step is skipped and counted; after `max_nonfinite` in a row the run stops,
  naming the last checkpoint (none is written during such a streak).
- Loading: safetensors for weights, weights_only for the rest; a checkpoint that does not load is skipped, with a
  warning, for the one before it.
- torchrun: DistributedDataParallel (NCCL on GPUs, gloo on the CPU); rank 0 alone writes, logs and prints errors.
- CPU runs keep freed memory for reuse (glibc's allocator would hand big tensors back to the OS each step).
- Bad input raises UsageError: one line on stderr, exit status 2. A run that cannot go on: RunError, 1.
"""
import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import platform
import pickle
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class RunError(Exception):
    """A run that cannot go on: reported in one line, exit status 1."""


def cli(main):
    """Run main(); turn UsageError and RunError into one line on stderr and a non-zero exit. Under torchrun
    rank 0 alone prints it: both errors are raised alike on every rank, and N copies would bury it. Either way
    the process group is left, and a torchrun worker then ends at once (end_worker). Not after any other exception,
    where other ranks may still wait in a collective."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
        except (UsageError, RunError) as e:
            if os.environ.get("RANK", "0") == "0":
                print(f"error: {e}", file=sys.stderr)
            status = 2 if isinstance(e, UsageError) else 1
            end_worker(status)
            sys.exit(status)
        end_worker(0)
        return result
    return wrapped


def end_worker(status: int):
    """Leave the process group; a torchrun worker (WORLD_SIZE > 1) then exits with status at once, without the
    interpreter's finalization. There torch's C++ teardown aborted one rank in about six runs of train_toy here, even
    after destroy_process_group (SIGABRT, "terminate called without an active exception", no Python frame left), and
    torchrun then killed the other ranks, rank 0's evaluation with them. Every file the scripts write is closed by
    then; stdout and stderr are flushed."""
    worker = dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    leave_process_group()
    if worker:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def leave_process_group():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one (not None or False)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (and status 2) instead of the usage block; --help shows defaults."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_Help, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive(kind=int):
    """An argparse type for a positive finite number."""
    def parse(text):
        value = kind(text)  # argparse reports a ValueError as "invalid positive value"
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
        return value
    parse.__name__ = "positive"
    return parse


def check_out(out: Path, *, allowed: bool, hint: str):
    """Refuse a non-empty --out unless allowed: nothing is overwritten by accident."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not allowed:
        raise UsageError(f"--out {out} is not empty; {hint}")


def clear(out: Path, patterns):
    """--overwrite: remove what an earlier run wrote (only that: --out may hold other things)."""
    for pattern in patterns:
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


# ----------------------------------------------------------------------------------------------------
# Devices and torchrun.


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, *args):
        if self.main:
            tqdm.write(" ".join(str(a) for a in args))

    def all_true(self, flag) -> bool:
        """flag (a bool or a one-element tensor) is true on every rank: the same decision everywhere."""
        if self.world == 1:
            return bool(flag)
        t = torch.as_tensor(flag, device=self.device).float().reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.item() == 1


def setup(device_name: str = "auto") -> Dist:
    """Pick the device (cuda when present under "auto"; say which) and join torchrun's process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError:
        raise UsageError(f"unknown --device {device_name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        keep_freed_memory()
    d = Dist(rank, world, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    d.say(f"device: {device} ({name})" + (f", {world} processes" if world > 1 else ""))
    return d


def keep_freed_memory():
    """glibc: serve tensors of up to 32 MiB from the heap and keep what is freed, instead of mapping each big
    tensor afresh and handing it back to the OS (page faults on every step: 20% of a digits step). A no-op
    elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's ceiling)
    libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """The generator for one step of one rank: resumes and ranks draw exactly what they should."""
    return torch.Generator(device=device).manual_seed(hash((seed, rank, step)) & (2 ** 62 - 1))


# ----------------------------------------------------------------------------------------------------
# Checkpoints: out/checkpoints/step-00001000/{student,ema}.safetensors + state.pt


def warmup_cosine(optimizer, steps: int, warmup: int):
    """The learning rate of both scripts' decaying schedule: `warmup` steps of linear warm-up, then a cosine decay
    to 0 at `steps` (and 0 after)."""
    factor = lambda i: min(1.0, (i + 1) / (warmup + 1)) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def timed_warmup_cosine(optimizer, *, start: float, seconds: float, warmup_share: float):
    """warmup_cosine over a budget of seconds in place of steps: the factor follows the share of the budget spent,
    u = (time.perf_counter() - start) / seconds, so that a run of unknown speed warms up over warmup_share of it
    and decays to 0 at its deadline (a race at equal seconds; not resumable)."""
    def factor(_):
        u = min(1.0, max(0.0, (time.perf_counter() - start) / seconds))
        return min(1.0, u / warmup_share if warmup_share else 1.0) * 0.5 * (1 + math.cos(math.pi * u))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out: Path, step: int, weights: dict, state: dict, keep: int = 2) -> Path:
    """Write weights (name -> state dict) and state atomically; keep the newest `keep` checkpoints."""
    root, name = Path(out) / "checkpoints", f"step-{step:08d}"
    final, tmp, trash = root / name, root / f".tmp-{name}-{os.getpid()}", root / f".old-{name}-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    for folder in (tmp, trash):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    for key, sd in weights.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, tmp / f"{key}.safetensors")
    torch.save({**state, "weights": sorted(weights)}, tmp / "state.pt")  # what load_checkpoint must find
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # the same step again: a damaged checkpoint that a resume skipped
        final.rename(trash / name)
    tmp.rename(final)
    _fsync(root)
    # Older checkpoints beyond `keep` go out of sight at once (a kill while deleting leaves no half checkpoint),
    # then the trash and the leftovers of killed writes are deleted. Newer ones are left alone: a resume skipped
    # them because they do not load, and this run replaces them when it gets there.
    older = [p for p in checkpoints(out) if p.name < name]
    for old in older[:max(0, len(older) - keep + 1)]:
        old.rename(trash / old.name)
    for leftover in root.glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def checkpoints(out: Path) -> list:
    """The checkpoint folders in out, oldest first (written ones only: a killed write's folder starts with '.')."""
    root = Path(out) / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def load_checkpoint(path: Path):
    """(weights, state): safetensors and a weights_only torch.load, so nothing arbitrary is unpickled."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    names = state.pop("weights", None) or [f.stem for f in sorted(path.glob("*.safetensors"))]
    weights = {name: load_file(path / f"{name}.safetensors") for name in names}
    return weights, state


def latest_checkpoint(out: Path):
    """The newest checkpoint that loads: (path, weights, state), or None when there is none."""
    for path in reversed(checkpoints(out)):
        try:
            return (path, *load_checkpoint(path))
        except Exception as e:  # a damaged folder (disk trouble): say so and fall back to an older one
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            if isinstance(e, pickle.UnpicklingError):  # weights_only refused an object: never run it
                reason = "it holds objects other than tensors and plain values; refused"
            print(f"warning: checkpoint {path} does not load ({reason}); trying an older one", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------------------------------
# The training loop.


@contextlib.contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a flag the loop reads between steps (the step in flight finishes)."""
    received = []
    handler = lambda signum, frame: received.append(signum)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def flag_of(key: str) -> str:
    """The command-line flag of an argparse destination: batch_size -> --batch-size."""
    return "--" + key.replace("_", "-")


def show_value(value) -> str:
    """A flag's value as it is typed: 1.0,4.0 for a range, none where it was not given."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def recipe_changed(key: str, old, new, path: Path) -> str:
    """The line that refuses a resume with another value of a flag than the run was started with."""
    return (f"{flag_of(key)} {show_value(new)}: this run was started with {show_value(old)} ({path}); --resume "
            "continues a run with its own flags: pass that value, or start afresh (--overwrite, or another --out)")


def machine_name(device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")] \
        if cpuinfo.exists() else []
    return f"{names[0] if names else platform.processor() or 'CPU'}, {torch.get_num_threads()} torch threads of {os.cpu_count()} CPUs"


def cpu_seconds():
    """(this process's CPU seconds, every other process's) so far, from /proc/stat; None where there is none.
    The difference of two readings says whether a timed run had the machine to itself."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    ticks = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system, irq softirq steal
    own = sum(os.times()[:4])  # user and system, with children waited for
    return own, busy - own


def _grad_norm(loss, params) -> torch.Tensor:
    """The norm of d loss / d params, leaving .grad alone (the graph kept for the step's own backward)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))


def extra_step(optimizer, loss, module, d: Dist) -> torch.Tensor:
    """One update of a network a loss_fn trains itself (Trainer's extras: the corrector's fake network): backward,
    gradient norm clipped to 1, the step skipped where the loss or the norm is not finite on some rank, as the
    student's. Returns the detached loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    if d.all_true(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
        optimizer.step()
    return loss.detach()


class Trainer:
    """Owns the optimisation loop: skip non-finite steps, clip, EMA, log, checkpoint, resume, stop cleanly.
    extras: {name: (module, optimizer)} that loss_fn trains itself (the corrector's fake network), checkpointed and
    resumed with the student. A loss_fn's logs may hold "terms", {name: loss with its graph}: every log_every steps
    the norm of each term's gradient on the student's weights is logged (grad_norm_NAME)."""

    def __init__(self, *, out, model, optimizer, lr_schedule=None, ema=None, dist_info: Dist, config: dict,
                 ckpt_every: int = 1000, clip: float = 1.0, max_nonfinite: int = 5, log_every: int = 50, extras=None):
        self.out, self.model, self.optimizer, self.lr_schedule, self.ema = Path(out), model, optimizer, lr_schedule, ema
        self.extras = extras or {}
        self.d, self.config, self.ckpt_every, self.clip = dist_info, config, ckpt_every, clip
        self.max_nonfinite, self.log_every = max_nonfinite, log_every
        self.step, self.skipped, self.in_row = 0, 0, 0
        self.saved = None  # (step, path) of the newest checkpoint this run wrote or resumed from

    @property
    def student(self):
        return getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel

    def state_dicts(self):
        weights = {"student": self.student.state_dict()}
        if self.ema is not None:
            weights["ema"] = self.ema.module.state_dict()
        state = {"step": self.step, "skipped": self.skipped, "optimizer": self.optimizer.state_dict(),
                 "config": self.config}
        if self.lr_schedule is not None:
            state["lr_schedule"] = self.lr_schedule.state_dict()
        if self.ema is not None:
            state["ema_n_averaged"] = self.ema.n_averaged
        for name, (module, optimizer) in self.extras.items():
            weights[name], state[f"{name}_optimizer"] = module.state_dict(), optimizer.state_dict()
        return weights, state

    def save(self) -> Path:
        """Checkpoint this step (rank 0), once: a signal right after a periodic save does not write it again."""
        if self.d.main and (self.saved is None or self.saved[0] != self.step):
            self.saved = (self.step, save_checkpoint(self.out, self.step, *self.state_dicts()))
        return self.saved[1] if self.saved else None

    def resume(self, same_keys=()) -> bool:
        """Load the latest checkpoint in out (every rank reads it). False when there is none. same_keys: the config
        entries (each a flag's value) that must be the checkpoint's: any other is refused in one line. One the
        checkpoint does not record (an older version wrote it) is taken from this run, with a warning."""
        found = latest_checkpoint(self.out)
        if found is not None:
            path, weights, state = found
            for key in same_keys:
                if key not in state["config"]:
                    self.d.say(f"warning: --resume: {path} does not record {flag_of(key)} (an older version wrote it); "
                               f"going on with {show_value(self.config.get(key))}")
                elif state["config"][key] != self.config.get(key):
                    raise UsageError(recipe_changed(key, state["config"][key], self.config.get(key), path))
            if (self.lr_schedule is None) != ("lr_schedule" not in state):  # a schedule must resume with its state
                raise UsageError(f"--resume: {path} was trained {'with' if 'lr_schedule' in state else 'without'} a "
                                 f"learning-rate schedule, and this run has {'none' if self.lr_schedule is None else 'one'}")
            self.student.load_state_dict(weights["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_schedule is not None:
                self.lr_schedule.load_state_dict(state["lr_schedule"])
            if self.ema is not None:
                self.ema.module.load_state_dict(weights["ema"])
                self.ema.n_averaged.copy_(state["ema_n_averaged"])
            for name, (module, optimizer) in self.extras.items():
                if name not in weights:
                    raise UsageError(f"--resume: {path} holds no {name} network; this run trains one")
                module.load_state_dict(weights[name])
                optimizer.load_state_dict(state[f"{name}_optimizer"])
            self.step, self.skipped, self.saved = state["step"], state["skipped"], (state["step"], path)
            self.d.say(f"resumed from {path} at step {self.step}")
        if self.d.world > 1:  # a folder that only some processes see (multi-node, local disks) would split the run
            t = torch.tensor([self.step, -self.step], dtype=torch.float64, device=self.d.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if t[0] != -t[1]:
                raise RunError(f"--resume: the processes found checkpoints of different steps in {self.out}; "
                               "it must be one folder that every process sees")
        return found is not None

    def log(self, record: dict):
        if self.d.main:  # nan and inf as strings: the log stays valid JSON
            record = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, steps: int, loss_fn, *, desc="boot", every=None, until=None):
        """loss_fn(step) -> (loss, logs). every: optional (n, fn(step)) called every n steps (validation).
        until: a time.perf_counter() deadline (a budget of seconds): no step starts after it, and the run
        ends there as at its last step (logged, checkpointed)."""
        self.out.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        start, start_step = time.perf_counter(), self.step
        bar = tqdm(total=steps, initial=self.step, desc=desc, disable=not self.d.main, dynamic_ncols=True)
        with stop_requests() as stop, bar:  # the bar is closed before an error line is printed
            while self.step < steps:
                if until is not None and time.perf_counter() >= until:
                    self.log({"step": self.step, "event": f"the budget ran out at step {self.step} of {steps}"})
                    break
                loss, logs = loss_fn(self.step)
                terms = logs.pop("terms", None)
                if terms and ((self.step + 1) % self.log_every == 0 or self.step + 1 == steps):  # when logged below
                    logs = logs | {f"grad_norm_{name}": _grad_norm(term, params) for name, term in terms.items()}
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # always: under DDP every rank joins the gradient all-reduce
                norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip else float("inf"))
                # The gradient (all-reduced) is the same on every rank, the loss is not: every rank decides alike.
                finite = self.d.all_true(torch.isfinite(loss.detach()) & torch.isfinite(norm))
                if finite:
                    self.optimizer.step()
                    if self.ema is not None:
                        self.ema.update_parameters(self.student)
                    self.in_row = 0
                else:  # skip the update, keep the step's place in the schedule
                    self.skipped, self.in_row = self.skipped + 1, self.in_row + 1
                if self.lr_schedule is not None:
                    with warnings.catch_warnings():  # torch warns when the schedule steps without the optimizer
                        warnings.simplefilter("ignore", UserWarning)
                        self.lr_schedule.step()
                self.step += 1
                bar.update(1)
                if not finite:
                    self.log({"step": self.step, "event": "non-finite loss or gradient, update skipped",
                              "skipped": self.skipped})
                    if self.in_row >= self.max_nonfinite:
                        raise RunError(f"{self.in_row} non-finite losses or gradients in a row (steps "
                                       f"{self.step - self.in_row + 1} to {self.step}; lower --lr, or train in fp32); "
                                       f"last good checkpoint: {self.saved[1] if self.saved else 'none written yet'}")
                if self.step % self.log_every == 0 or self.step == steps:
                    record = {k: (v.item() if torch.is_tensor(v) else v) for k, v in logs.items()}
                    record.update(step=self.step, grad_norm=norm.item(), skipped=self.skipped,
                                  lr=self.optimizer.param_groups[0]["lr"],
                                  steps_per_s=(self.step - start_step) / (time.perf_counter() - start))
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                    self.log(record)
                if every and self.step % every[0] == 0:
                    every[1](self.step)
                if self.step % self.ckpt_every == 0 and self.step < steps and not self.in_row:
                    self.save()  # not during a non-finite streak: the last checkpoint before it is kept
                if not self.d.all_true(not stop):
                    path = self.save()
                    self.d.say(f"stopped by signal at step {self.step}; checkpoint {path}; continue with --resume")
                    sys.exit(128 + (stop[0] if stop else signal.SIGTERM))
        if self.d.world > 1:  # DDP keeps replicas identical; check it, since a silent drift would waste the run
            modules = [self.student] + [module for module, _ in self.extras.values()]
            sums = torch.stack([p.detach().double().sum() for m in modules for p in m.parameters()])
            gathered = [torch.empty_like(sums) for _ in range(self.d.world)]
            dist.all_gather(gathered, sums)
            identical = all(torch.equal(g, gathered[0]) for g in gathered)
            self.log({"step": self.step, "ranks_identical": identical})
            if not identical:
                self.d.say("warning: the processes' weights differ; rank 0's are written")
        if self.skipped:
            self.d.say(f"warning: {self.skipped} of {self.step} steps skipped for a non-finite loss or gradient "
                       f"(log.jsonl says which)")
        return self.save()
