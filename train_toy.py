"""train_toy.py: distill a teacher into a one-call student with BOOT, and show how close it gets.

    python train_toy.py                         # exact 2-D Gaussian-mixture teacher, CPU, about 90 seconds
    python train_toy.py --data checkerboard     # other exact teachers: unequal, checkerboard, spiral, digits
    python train_toy.py --teacher teachers/mnist16                        # the committed MNIST DDPM, judged
    python train_toy.py --teacher google/ddpm-cifar10-32 --device cuda    # a diffusers pixel model

Writes into --out: metrics.json, samples.npz, samples.png, error_map.png (where on the grid the student's error
enters), student.safetensors, checkpoints/ (resume with --resume) and log.jsonl. torchrun --nproc_per_node N
train_toy.py ... runs DDP. The recipe and its flags are bootkit/toy.py's, the figures bootkit/evaluation.py's;
this file parses, builds, runs and writes.
"""
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning made small steps 60x slower on a busy CPU

import numpy as np
from safetensors.torch import save_file

import boot
from bootkit import evaluation, pictures, runtime, toy

RUN_OUTPUTS = ("checkpoints", "metrics.json", "samples.npz", "samples.png", "error_map.png", "student.safetensors",
               "log.jsonl")
PICTURE_KS = (1, 4, 16)  # the teacher's DDIM-k rows of a pixel teacher's samples.png, between the student and the reference
PICTURE_NOISES = 8
PICTURE_FAKE_STEPS = 16  # the corrector's fake network, sampled with DDIM-16 from the same noises


def write_pixel_picture(path, arrays, reference: str):
    """samples.png of a pixel teacher: the student (one call), the teacher's DDIM-1, 4, 16 (those below the
    reference's steps), the converged reference and, with the corrector, its fake network's DDIM-16, from the same
    PICTURE_NOISES noises, a column each."""
    keys = ["student"] + [f"ddim_{k}" for k in PICTURE_KS if f"ddim_{k}" in arrays] + ["teacher"]
    labels = ["student, 1 call"] + [f"teacher DDIM-{k}" for k in PICTURE_KS if f"ddim_{k}" in arrays]
    labels.append(f"{reference.split(' from')[0]} (reference)")
    if "fake" in arrays:
        keys.append("fake")
        labels.append(f"fake network DDIM-{PICTURE_FAKE_STEPS}")
    pictures.save_labelled(path, [list(arrays[key][:PICTURE_NOISES]) for key in keys], row_labels=labels,
                           col_labels=[f"noise {i + 1}" for i in range(PICTURE_NOISES)],
                           title="the same noise in each column")


def write_digits_picture(path, arrays, shape):
    """samples.png of the exact digits teacher: fresh data, then the teacher and the student from the same noises."""
    rows = [list(arrays[key][:16].reshape(16, *shape)) for key in ("data", "teacher", "student")]
    pictures.save_labelled(path, rows, row_labels=["data (fresh draws)", "teacher, converged DDIM", "student, 1 call"],
                           col_labels=[str(i + 1) for i in range(16)],
                           title="teacher and student: the same noise in each column")


@runtime.cli
def main(argv=None):
    args = toy.parse_args(argv)
    out = Path(args.out)
    runtime.check_out(out, allowed=args.resume or args.overwrite, hint="add --resume to continue it, or --overwrite")
    d = runtime.setup(args.device)
    teacher, schedule, student, shape, exact_teacher = toy.build(args, d.device)  # fails before anything is written
    judge = evaluation.find_judge(args, shape, d.device)
    if args.overwrite and d.main:
        runtime.clear(out, RUN_OUTPUTS)
    what = f"exact {args.data} teacher" if exact_teacher is not None else f"teacher {args.teacher}"
    if d.main:
        print(f"BOOT: {what}, {sum(p.numel() for p in student.parameters()):,}-parameter student, "
              f"N = {args.bootstrap_steps}, {args.steps} steps of batch {args.batch_size}")
    evaluated, fake = toy.train(args, d, teacher, schedule, student, shape)
    if not d.main:
        return
    save_file({k: v.contiguous() for k, v in evaluated.state_dict().items()}, out / "student.safetensors")
    m, arrays = evaluation.evaluate(args, teacher, schedule, evaluated, shape, d.device, exact_teacher, judge)
    m["config"] = vars(args)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    np.savez(out / "samples.npz", **{k: v.numpy() for k, v in arrays.items()})
    if exact_teacher is None:
        if fake is not None:  # what the corrector's fake network learned of the student: a collapse shows here
            arrays["fake"] = boot.ddim_sample(fake, arrays["noise"][:PICTURE_NOISES].to(d.device), schedule=schedule,
                                              steps=PICTURE_FAKE_STEPS).cpu()
        write_pixel_picture(out / "samples.png", arrays, m["reference"])
    elif shape == (2,):
        grid = boot.time_grid(schedule, args.bootstrap_steps, spacing=args.spacing)
        noise = arrays["noise"][:12].to(d.device)
        ys = boot.fixed_point(teacher, noise, schedule=schedule, grid=grid.to(d.device), order=args.order)
        pictures.plot_2d(out / "samples.png", arrays, evaluated, ys.cpu(), grid)
    else:  # digits: rows of data, teacher (converged DDIM) and student (one call)
        write_digits_picture(out / "samples.png", arrays, exact_teacher.shape)
    pictures.plot_error_map(out / "error_map.png", m["error_map"], what)
    evaluation.print_table(m)
    print(f"\nwrote {out}/: metrics.json, samples.png, error_map.png, samples.npz, student.safetensors, checkpoints/")

if __name__ == "__main__":
    main()
