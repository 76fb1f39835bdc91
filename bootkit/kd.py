"""bootkit/kd.py: the baseline BOOT replaces, knowledge distillation (Luhman & Luhman 2021): offline pairs of
(noise, the teacher's DDIM-k sample from it), then the student regressed at t = 0 on them, with train_toy's
optimizer, schedule, EMA and loop (bootkit.toy, runtime.Trainer). The benchmark and the pixel race use it; what the
races share besides is bootkit/racing.py."""
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
