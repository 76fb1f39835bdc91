"""bootkit/card.py: what a train_sd.py run hands over: the one-step scheduler config beside the student's UNet,
the diffusers snippet that draws with it, and the Hugging Face model card."""
from pathlib import Path

import boot


def save_for_diffusers(folder: Path, g: boot.TeacherStudent):
    """Next to the UNet in folder: the BootOneStepScheduler config that turns its prediction into the image
    at the student's own alpha_T, sigma_T (the very floats boot.TeacherStudent uses)."""
    from boot_diffusers import BootOneStepScheduler
    BootOneStepScheduler(prediction_type=g.prediction, alpha_T=g.alpha_a, sigma_T=g.sigma_a).save_pretrained(folder)


def diffusers_snippet(teacher: str, student: str, w: float, resolution: int) -> str:
    """Python that draws images with the student through StableDiffusionPipeline (README and model card)."""
    return f'''import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from boot_diffusers import BootOneStepScheduler  # one small file of the boot repository

student = "{student}"  # the run's student folder, or its hub id
pipe = StableDiffusionPipeline.from_pretrained(
    "{teacher}", unet=UNet2DConditionModel.from_pretrained(student),
    scheduler=BootOneStepScheduler.from_pretrained(student))
# On a GPU: torch_dtype=torch.float16 in both from_pretrained calls, then pipe.to("cuda").
images = pipe(["a lighthouse on a cliff at dawn"], guidance_scale={w}, num_inference_steps=1,
              height={resolution}, width={resolution}, generator=torch.Generator().manual_seed(0)).images
'''


def model_card(meta: dict, student: str, g: boot.TeacherStudent) -> str:
    """student/README.md: a Hugging Face model card (YAML header, then what the student is and how to use it)."""
    teacher, w, rng, n = meta["teacher"], meta["guidance_scale"], meta["guidance_range"], meta["bootstrap_steps"]
    base = "" if Path(teacher).is_dir() else f"base_model: {teacher}\n"  # the hub wants an id, not a local folder
    guidance = f"any w in [{rng[0]}, {rng[1]}] (the snippet uses {w})" if rng else f"w = {w} only (guidance_scale={w})"
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

With diffusers and `boot_diffusers.py` (one small file of the boot repository):

```python
{diffusers_snippet(teacher, student, w, meta['resolution'])}```

Or `python train_sd.py --sample RUN --prompts FILE` in the boot repository (the same images from the same noise).

## Conventions (what BootOneStepScheduler encodes)

- The pipeline's latents are the noise eps itself (standard normal, `init_noise_sigma = 1`).
- The UNet reads eps at timestep -1: the student's time t = 0, where the teacher's timestep i is t = (i + 1) / n.
- Its {g.prediction} prediction becomes the image latents at the FIXED coefficients of t = T, in float32:
  `y = to_x0(pred, x_t = eps, alpha_T = {g.alpha_a!r}, sigma_T = {g.sigma_a!r})`.
- Guidance: the UNet's guidance input (`time_cond_proj_dim`) reads StableDiffusionPipeline's embedding of w - 1;
  the pipeline then runs no classifier-free guidance of its own and calls the UNet once.
- The latents decode with the teacher's VAE, or an AutoencoderTiny (`madebyollin/taesd` for SD 1.x and 2.x).
"""

