"""bootkit/judging.py: digit teachers judged (a teacher folder of teachers/train_teacher.py --kind text, whose judge/ is a
digit classifier). One loop draws, for each w, the teacher's guided DDIM-k and the student's one call from the same
fixed noise and prompts, and the judge scores them: prompted-digit accuracy and FD to the held-out digits. The
teacher's own figures (teachers/train_teacher.py) and a student's (train_sd.py, at the end of training or --evaluate) are
both that loop."""
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

import boot
from bootkit import digits, metrics, pictures, sd
from bootkit.runtime import UsageError

JUDGE_SEED = 1  # the noise of every judged evaluation of a student, whatever the run's seed: the teacher's (seed 0 + 1)
JUDGE_BATCH = 250  # samples per network call
PICTURE_KS = (1, 4, 16, 50)  # the teacher's rows of a judged picture, above the student's


def first_prompt_without_a_digit(prompts: sd.Prompts):
    """The index of the first prompt that names no single digit (digits.prompt_digit), or None; read in chunks."""
    for start in range(0, len(prompts), 4096):
        for i, text in enumerate(prompts.read(range(start, min(start + 4096, len(prompts)))), start):
            if digits.prompt_digit(text) is None:
                return i
    return None


def find_judge(args, prompts: sd.Prompts, teacher: str, d, *, required: str = None):
    """The judge of the judged evaluation, or None: --judge FOLDER, else the teacher folder's judge/ where it has one
    and every prompt names one digit. An explicit --judge (or `required`, the --evaluate flag that needs one) fails
    in one line where a prompt names no digit; the teacher's own judge is then skipped with a note."""
    if args.judge == "none":
        if required:
            raise UsageError(f"{required}: --judge none leaves nothing to evaluate")
        return None
    folder = Path(args.judge) if args.judge else Path(teacher) / "judge"
    explicit = args.judge is not None or required is not None
    if args.judge is None and not (folder / "config.json").is_file():  # no digit teacher (or a hub id): no judge
        if required:
            raise UsageError(f"{required}: its teacher {teacher} has no judge/; pass --judge FOLDER")
        return None
    flag = f"--judge {folder}" if args.judge else required or f"{folder}"
    missing = first_prompt_without_a_digit(prompts)
    if missing is not None:
        problem = (f"prompt {prompts.read([missing])[0]!r} (line {prompts.lines[missing]} of --prompts) names no "
                   "single digit")
        if explicit:
            raise UsageError(f"{flag}: the judge scores digits, and {problem}")
        d.say(f"no judged evaluation: {problem} ({folder} judges digits)")
        return None
    judge, mean, cov = sd.loaded(flag, lambda: metrics.load_judge(folder, d.device))
    return SimpleNamespace(folder=folder.resolve(), judge=judge, reference=(mean, cov), flag=flag, explicit=explicit)


def judge_fits(judging, resolution: int, d):
    """judging where its judge reads images of this resolution; else a one-line error (explicit) or None, noted."""
    if judging is None or judging.judge.config["size"] == resolution:
        return judging
    problem = f"it reads {judging.judge.config['size']}-pixel images, this run draws {resolution}"
    if judging.explicit:
        raise UsageError(f"{judging.flag}: {problem}")
    d.say(f"no judged evaluation: {judging.flag}: {problem}")
    return None


def judged_ws(w: float, guidance_range) -> list:
    """The w a student is judged at: its one w, or digits.FIGURE_WS (1, 2, 3, 5) each clamped into its range."""
    if guidance_range is None:
        return [float(w)]
    lo, hi = guidance_range
    return sorted({min(max(float(v), lo), hi) for v in digits.FIGURE_WS})



def step_name(schedule) -> str:
    """What boot's DDIM step is called on a teacher of this schedule: Euler's step on a flow (diffusers' name for
    SD3's sampler; boot.Schedule.flow names its schedules flow{shift})."""
    return "Euler" if schedule.name.startswith("flow") else "DDIM"


@torch.no_grad()
def judge_guided(teacher, judge, reference, texts: list, eps, *, ws, student=None, dtype: str = "fp32",
                 teacher_ks=digits.FIGURE_KS) -> tuple:
    """For each w in ws: the teacher's guided DDIM-k (k in teacher_ks; none, to judge a student alone, as
    bench/race_t2i.py judges each of its students against teacher rows drawn once) and, given a student UNet, its one call,
    from the same noise eps and prompts texts (each naming one digit), JUDGE_BATCH at a time under the autocast of
    dtype (--dtype's name), decoded to gray (digits.decode) and scored by the judge in float32
    (metrics.judge_prompted). teacher: sd.load_teacher's. Returns (scores, images, named): scores[w] = {"teacher_ddim":
    {k: {accuracy, fd}}, "student": {...}}, images[w] = {"DDIM-k": gray images, "student": ...}, w and k as text;
    named: the digit each prompt names."""
    device, schedule, prediction = eps.device, teacher.teacher.schedule, teacher.teacher.prediction
    named = torch.tensor([digits.prompt_digit(t) for t in texts])
    encode = sd.PromptEncoder(teacher, device, warn=False, resolution=eps.shape[-1] * sd.vae_scale(teacher.vae))
    cond, null = encode(texts), encode.null()
    net = sd.teacher_fn(teacher.unet, schedule, prediction)

    def score(sampler):  # every sample, JUDGE_BATCH at a time; the VAE in its dtype, the judge in float32
        with sd.autocast(device, sd.DTYPES[dtype]):
            latents = torch.cat([sampler(e, c) for e, c in zip(eps.split(JUDGE_BATCH), cond.split(JUDGE_BATCH))])
        x = digits.decode(teacher.vae, latents.to(teacher.vae.dtype)).float()
        return x, metrics.judge_prompted(judge, x, named, *reference)

    scores, images = {}, {}
    calls = len(ws) * (sum(teacher_ks) + (student is not None))
    with tqdm(total=calls, desc="judge", unit="call", dynamic_ncols=True) as bar:
        for w in ws:
            name = f"{w:g}"
            row, seen = scores.setdefault(name, {"teacher_ddim": {}}), images.setdefault(name, {})
            guided = teacher.teacher.finish(boot.guided(net, scale=float(w), null_cond=null))
            for k in teacher_ks:
                bar.set_postfix_str(f"w {name}, teacher {step_name(schedule)}-{k}")
                seen[f"DDIM-{k}"], row["teacher_ddim"][str(k)] = score(
                    lambda e, c: boot.ddim_sample(guided, e, schedule=schedule, steps=k, cond=c))
                bar.update(k)
            if student is not None:
                bar.set_postfix_str(f"w {name}, student")
                g = lambda e, c: boot.sample_student(
                    sd.student_fn(student, schedule, prediction, torch.full((len(e),), float(w), device=device)), e, c)
                seen["student"], row["student"] = score(g)
                bar.update(1)
    return scores, images, named


def judge_student(teacher, student, judging, prompts, *, ws, shape, samples: int, dtype: str, device,
                  out: Path) -> dict:
    """A student's judged figures (judge_guided) on samples noises of seed JUDGE_SEED and --prompts in turn; with
    the teacher's prompts.txt, as many samples and fp32, the teacher's rows are its figures.json's. Writes
    out/figures/judged-w{w}.png: rows teacher DDIM-1, 4, 16, 50 and the student, a column per digit."""
    texts = prompts.read([i % len(prompts) for i in range(samples)])
    eps = torch.randn(samples, *shape, generator=torch.Generator().manual_seed(JUDGE_SEED)).to(device)
    scores, images, named = judge_guided(teacher, judging.judge, judging.reference, texts, eps, ws=ws,
                                         student=student, dtype=dtype)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    result = {"judge": str(judging.folder), "samples": samples, "seed": JUDGE_SEED, "dtype": dtype,
              "prompts": f"{prompts.path}, in turn", "teacher_step": step_name(teacher.teacher.schedule), "guidance": {}}
    for name, row in scores.items():
        row = result["guidance"][name] = {"student": row["student"], "teacher_ddim": row["teacher_ddim"],
                                          "picture": f"figures/judged-w{name}.png"}
        labels = [f"teacher {result['teacher_step']}-{k}" for k in PICTURE_KS] + ["student, 1 call"]
        cells = [pictures.digit_columns(images[name][key], named) for key in [f"DDIM-{k}" for k in PICTURE_KS] + ["student"]]
        pictures.save_labelled(out / row["picture"], cells, row_labels=labels, col_labels=pictures.DIGIT_LABELS,
                               title=f"w = {name}: the first sample prompted with each digit, same noise in a column")
    return result


def judged_table(judged: dict) -> str:
    """The judged figures as a short table: accuracy and FD per w, the student and the teacher's DDIM-k."""
    some = next(iter(judged["guidance"].values()))
    columns = ["student"] + [f"{judged.get('teacher_step', 'DDIM')}-{k}" for k in some["teacher_ddim"]]
    lines = [f"judged: prompted-digit accuracy, FD to the held-out digits ({judged['samples']} samples, "
             f"{judged['dtype']})", "w    " + "".join(f"{c:>15}" for c in columns)]
    for w, row in judged["guidance"].items():
        cells = [row["student"]] + list(row["teacher_ddim"].values())
        lines.append(f"{w:<5}" + "".join(f"{c['accuracy']:>8.3f}{c['fd']:>7.1f}" for c in cells))
    return "\n".join(lines)

