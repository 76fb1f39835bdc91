"""bootkit/card.py: what a train_sd.py run hands over: RUN/pipeline, a diffusers pipeline folder with the student and
the one-step scheduler, the snippet that draws with it, and its Hugging Face model card; RUN/lora for a LoRA student."""
import copy
from pathlib import Path

import torch

import boot
from bootkit import sd


def one_step(parts, g: boot.TeacherStudent, *, guidance: tuple, w: float, guidance_input: bool):
    """(the stock one-step scheduler of the student g, its facts: boot_diffusers.one_step_scheduler)."""
    import boot_diffusers
    scheduler = boot_diffusers.one_step_scheduler(parts.scheduler.config, prediction_type=g.prediction, alpha_T=g.alpha_a,
                                                  sigma_T=g.sigma_a, guidance_range=list(guidance), guidance_scale=w,
                                                  guidance_input=guidance_input)
    return scheduler, scheduler.config[boot_diffusers.BOOT_KEY]


def save_pipeline(folder: Path, teacher: str, unet, g: boot.TeacherStudent, *, resolution: int, guidance: tuple,
                  w: float):
    """folder: a StableDiffusionPipeline folder (StableDiffusionXLPipeline for SDXL, StableDiffusion3Pipeline for SD3)
    that stock diffusers and BootPipeline (BootXLPipeline, BootSD3Pipeline) read in one call: the teacher's
    tokenizers, text encoders and VAE in float32 (lossless whatever their stored precision), the student network
    moved to read its t = 0 at the timestep the stock scheduler's one step passes (boot_diffusers.retime), and that
    scheduler (boot_diffusers.one_step_scheduler: LCMScheduler, or SD3's own flow-matching Euler), which turns the
    prediction into the image at the
    student's alpha_T, sigma_T and records the trained guidance [WMIN, WMAX] and w. The UNet's sample_size becomes
    the trained resolution's, so that the pipelines' default height and width are the trained ones. The live unet
    is left as it was, bit for bit. No safety checker (requires_safety_checker False): it is another model of
    1.2 GB, not the student's; pass one to from_pretrained where it is wanted."""
    import boot_diffusers
    parts = sd.load_teacher(teacher, torch.float32, torch.device("cpu"), unet=False)
    unet.register_to_config(sample_size=resolution // sd.vae_scale(parts.vae))
    scheduler, facts = one_step(parts, g, guidance=guidance, w=w,
                                guidance_input=bool(unet.config.get("time_cond_proj_dim")))
    bias = boot_diffusers.time_layers(unet)[1].bias
    trained = bias.detach().clone()
    boot_diffusers.retime(unet, old=facts["trained_timestep"], new=facts["unet_timestep"])
    try:
        common = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, scheduler=scheduler)
        if parts.sd3:
            boot_diffusers.BootSD3Pipeline(**common, transformer=unet, text_encoder_2=parts.text_encoder_2,
                                           tokenizer_2=parts.tokenizer_2, text_encoder_3=parts.text_encoder_3,
                                           tokenizer_3=parts.tokenizer_3).save_pretrained(folder)
            return
        common["unet"] = unet
        if parts.xl:  # no watermarker: diffusers adds one only where invisible-watermark is installed
            boot_diffusers.BootXLPipeline(**common, text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2,
                                          force_zeros_for_empty_prompt=parts.force_zeros).save_pretrained(folder)
        else:
            boot_diffusers.BootPipeline(**common, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False).save_pretrained(folder)  # safetensors
    finally:
        with torch.no_grad():
            bias.copy_(trained)  # the run goes on with the weights it trained


def fused(unet):
    """A plain float32 UNet with a LoRA student's adapters merged into its weights (the live one is untouched)."""
    merged = copy.deepcopy(unet).float()
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def save_lora(folder: Path, teacher: str, unet, g: boot.TeacherStudent, *, w: float):
    """folder: a LoRA student as diffusers hands LoRAs over: pytorch_lora_weights.safetensors (peft keys, which
    load_lora_weights reads onto the stock teacher pipeline), scheduler/ (the one-step LCMScheduler to swap in:
    boot_diffusers.one_step_scheduler) and README.md. The time embedding's LoRA bias holds the shift retime gives the
    full student, (W + BA)(phi(-1) - phi(n - 1)), so that the stock scheduler's timestep n - 1 reads the student's
    t = 0; the other LoRA biases are zero (diffusers reads lora_bias for all or none)."""
    from peft.utils import get_peft_model_state_dict
    parts = sd.load_teacher(teacher, torch.float32, torch.device("cpu"), unet=False)
    scheduler, facts = one_step(parts, g, guidance=(w, w), w=w, guidance_input=False)
    state = {key: value.detach().float().cpu().clone() for key, value in get_peft_model_state_dict(unet).items()}
    for key in [k for k in state if k.endswith(".lora_B.weight")]:
        state[key.removesuffix("weight") + "bias"] = torch.zeros(state[key].shape[0])
    layer = unet.time_embedding.linear_1  # peft's LoRA layer over the base Linear
    with torch.no_grad():
        weight = layer.base_layer.weight.double() + layer.get_delta_weight("default").double()
        times = torch.tensor([facts["trained_timestep"], facts["unet_timestep"]], dtype=torch.float32, device=weight.device)
        phi = unet.time_proj(times).double()
        state["time_embedding.linear_1.lora_B.bias"] = (weight @ (phi[0] - phi[1])).float().cpu()
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    (StableDiffusionXLPipeline if parts.xl else StableDiffusionPipeline).save_lora_weights(
        folder, unet_lora_layers=state, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "README.md").write_text(lora_card(teacher, str(folder), w, rank=layer.r["default"]))


def lora_snippet(teacher: str, lora: str) -> str:
    """Python that draws with a LoRA student on the stock teacher pipeline (its README)."""
    return f'''import torch
from diffusers import DiffusionPipeline, LCMScheduler

pipe = DiffusionPipeline.from_pretrained("{teacher}")
pipe.scheduler = LCMScheduler.from_pretrained("{lora}", subfolder="scheduler")  # the one-step scheduler
pipe.load_lora_weights("{lora}")
images = pipe(["a lighthouse on a cliff at dawn"], num_inference_steps=1, guidance_scale=1.0,
              generator=torch.Generator().manual_seed(0)).images
'''


def lora_card(teacher: str, lora: str, w: float, *, rank: int) -> str:
    """lora/README.md: what the LoRA student is, how to draw with it, what it cannot do."""
    return f"""---
library_name: diffusers
tags:
- boot
- distillation
- one-step
- lora
- text-to-image
---

# One-step BOOT LoRA of {Path(teacher).name}

Rank-{rank} LoRA adapters on `{teacher}`'s UNet (attention, feed-forward, resnet convolutions, time projections and
the time embedding's first layer), distilled with BOOT by boot's `train_sd.py --lora-rank {rank}` from prompts
alone, at guidance w = {w} baked in. On the stock teacher pipeline, with the one-step scheduler of this folder
swapped in, it draws in one UNet call:

```python
{lora_snippet(teacher, lora)}```

- `guidance_scale=1.0` (or 0): the student carries w = {w} itself; above 1 the stock pipeline would run
  classifier-free guidance around it, two calls and another picture. A LoRA cannot carry the full student's
  guidance input: for a range of w, train the full student (`--guidance-range`, the run's `pipeline/`).
- `num_inference_steps=1`: the scheduler is diffusers' own LCMScheduler (`timestep_scaling` 1e6: its consistency
  boundary leaves the prediction's x0 unchanged); it calls the UNet at timestep n - 1, which the time embedding's
  LoRA bias moves to the student's t = 0. Without that scheduler (the teacher's own), the LoRA draws nothing meant.
- The same student, fused into a full UNet, is the run's `pipeline/` folder (what `--sample` and `--evaluate` read).
"""


def diffusers_snippet(pipeline: str, w: float, baked: bool = False) -> str:
    """Python that draws images with the run's pipeline folder with stock diffusers (README and model card); baked: a
    student with its one w inside (a LoRA run's), drawn without the pipeline's guidance."""
    scale = f"1.0,  # w = {w} is baked in: no guidance around it" if baked else f"{w},"
    return f'''import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{pipeline}")  # the run's pipeline folder, or its hub id
# On a GPU: from_pretrained(..., torch_dtype=torch.float16), then pipe.to("cuda").
images = pipe(["a lighthouse on a cliff at dawn"], num_inference_steps=1, guidance_scale={scale}
              generator=torch.Generator().manual_seed(0)).images
'''


def model_card(meta: dict, pipeline: str, g: boot.TeacherStudent) -> str:
    """pipeline/README.md: a Hugging Face model card (YAML header, then what the student is and how to use it)."""
    teacher, w, rng, n = meta["teacher"], meta["guidance_scale"], meta["guidance_range"], meta["bootstrap_steps"]
    base = "" if Path(teacher).is_dir() else f"base_model: {teacher}\n"  # the hub wants an id, not a local folder
    baked = not meta.get("guidance_input", True)  # a LoRA or SD3 student has no guidance input: its w is baked in
    guidance = (f"any w in [{rng[0]}, {rng[1]}] (default {w})" if rng else f"w = {w} only (guidance_scale={w})") + \
        "; BootPipeline refuses any other"
    training = (f"{meta['steps']} steps, batch {meta['batch_size']} per process, AdamW lr {meta['lr']} "
                f"({meta.get('lr_schedule', 'constant')}), {meta['dtype']}, "
                f"EMA {meta['ema'] or 'none'}, seed {meta['seed']}")
    val = meta.get("validation")
    sampler = f"{'DDIM' if meta.get('order', 1) == 1 else 'Heun'}-{n} on the {meta.get('spacing', 't')} grid"  # its fixed point
    figures = (f"latent RMSE of the student's one call to the teacher's {sampler}: {val['rmse_to_teacher']:.4g} "
               f"(the teacher's latents: RMS {val['teacher_rms']:.4g}), {val['prompts']} prompts at w = {w}, "
               f"step {val['step']}; picture `validation/step-{val['step']:08d}.png` of the run (teacher above, "
               "student below)") if val else "none measured"
    judged = meta.get("judged")
    if judged:  # a digit teacher's judge: the student against the teacher's DDIM-k of most steps
        last = lambda row: max(row["teacher_ddim"], key=int)
        scores = "; ".join(f"w = {w}: {r['student']['accuracy']:.3f} and {r['student']['fd']:.1f} (teacher "
                           f"DDIM-{last(r)}: {r['teacher_ddim'][last(r)]['accuracy']:.3f} and "
                           f"{r['teacher_ddim'][last(r)]['fd']:.1f})" for w, r in judged["guidance"].items())
        judged = (f"| judged | prompted-digit accuracy and FD to held-out digits, {judged['samples']} samples, "
                  f"step {judged['step']}: {scores}; pictures in `figures/` of the run |\n")
    return f"""---
library_name: diffusers
{base}tags:
- boot
- distillation
- one-step
- text-to-image
- stable-diffusion
pipeline_tag: text-to-image
---

# One-step BOOT student of {Path(teacher).name}

A UNet distilled from `{teacher}` with BOOT (Gu et al., "BOOT: Data-free Distillation of Denoising Diffusion
Models with Bootstrapping", arXiv 2306.05544) by boot's `train_sd.py`, from prompts alone (no images). It draws
an image in one UNet call.

| | |
|---|---|
| teacher | `{teacher}`, {g.prediction} prediction |
| guidance scale | {guidance} |
| training | {training} |
| grid | {n} steps: the student's fixed point is the teacher's {sampler} (trailing timesteps) |
| resolution | {meta['resolution']} x {meta['resolution']} pixels |
| validation | {figures} |
{judged or ""}
## Use

With diffusers alone (a StableDiffusionPipeline folder with diffusers' own LCMScheduler; nothing else to install):

```python
{diffusers_snippet(pipeline, w, baked)}```

Pass `num_inference_steps=1` and {"`guidance_scale=1.0` (the student carries its w; above 1 the stock pipeline would guide around it)" if baked else "a `guidance_scale` of the trained range"}: the stock pipeline checks neither (its
default is 50 steps, which draws something else, and w = 7.5, which the student extrapolates to without a word),
drops a `negative_prompt` unseen (guidance is built into the student: there is no unconditional branch for it to
replace), and runs img2img and inpainting pipelines that a student drawn from pure noise cannot honour. Its
default height and width are the trained {meta['resolution']} pixels. From the same prompts (one batch) and seed
it draws the images of `python train_sd.py --sample RUN --prompts FILE --seed 0` in the boot repository: both
draw the noise from a CPU generator, the same on any device.

`boot_diffusers.BootPipeline` (one small file of the boot repository) loads the same folder, defaults to one step
and the run's w, and raises a ValueError for what one step from noise cannot honour: a `guidance_scale` outside the
trained range, a `negative_prompt`, `num_inference_steps` other than 1.

## Conventions (what the folder encodes)

- The pipeline's latents are the noise eps itself (standard normal, `init_noise_sigma = 1`).
- LCMScheduler's one step calls the UNet at timestep {g.schedule.train_steps - 1} (n - 1); the UNet reads there the
  student's time t = 0 (boot's timestep -1, where the teacher's timestep i is t = (i + 1) / n): its time
  embedding's first bias was moved by the difference of the two timesteps' sinusoidal features
  (`boot_diffusers.retime`).
- The scheduler turns the {g.prediction} prediction into the image latents at alphas_cumprod[n - 1], the student's
  fixed coefficients of t = T:
  `y = to_x0(pred, x_t = eps, alpha_T = {g.alpha_a!r}, sigma_T = {g.sigma_a!r})`;
  its consistency boundary (`timestep_scaling` 1e6) leaves that y unchanged. The trained guidance range and w are in
  its config, under `_boot`.
- Guidance: the UNet's guidance input (`time_cond_proj_dim`) reads StableDiffusionPipeline's embedding of w - 1;
  the pipeline then runs no classifier-free guidance of its own and calls the UNet once.
- The latents decode with the teacher's VAE, or an AutoencoderTiny (`madebyollin/taesd` for SD 1.x and 2.x,
  `madebyollin/taesdxl` for SDXL).
"""

