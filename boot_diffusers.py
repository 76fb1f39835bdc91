"""boot_diffusers.py: boot.py's bridge to diffusers (BootOneStepScheduler: a BOOT student in StableDiffusionPipeline).

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from boot_diffusers import BootOneStepScheduler

    student = "runs/sd/student"  # the student folder of a train_sd.py run (UNet, scheduler config, model card)
    pipe = StableDiffusionPipeline.from_pretrained(
        "stable-diffusion-v1-5/stable-diffusion-v1-5", unet=UNet2DConditionModel.from_pretrained(student),
        scheduler=BootOneStepScheduler.from_pretrained(student))
    images = pipe(["a lighthouse on a cliff at dawn"], guidance_scale=7.5, num_inference_steps=1).images

Needs torch and diffusers, not boot.py: the run's student folder and this file are all a user needs.
"""
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

PREDICTIONS = ("epsilon", "v_prediction", "sample")  # diffusers' names, as in boot.py


class BootOneStepScheduler(SchedulerMixin, ConfigMixin):
    """One step from noise to the image latents with a BOOT student (train_sd.py's, boot.TeacherStudent).

    The student g(eps, t, c) = to_x0(unet(eps, t n - 1, c), x_t = eps, alpha_T, sigma_T) is drawn at t = 0:
    - the pipeline's latents are the noise eps itself (init_noise_sigma 1, no input scaling);
    - the UNet reads them at timestep -1, the time input of t = 0 (boot.Schedule.network_time: t n - 1);
    - its prediction becomes the sample at the FIXED alpha_T, sigma_T of t = T (not at t = 0), in float32:
      epsilon: (eps - sigma_T pred) / alpha_T;  v_prediction: alpha_T eps - sigma_T pred;  sample: pred.
    Guidance reaches the student through its own input (time_cond_proj_dim): StableDiffusionPipeline then
    embeds w - 1 for it and runs no classifier-free guidance, so the UNet is called once whatever w is.
    One step whatever num_inference_steps asks for (pass 1 to keep the progress bar honest)."""

    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, prediction_type: str, alpha_T: float, sigma_T: float):
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTIONS}")
        if prediction_type == "epsilon" and not alpha_T > 0:
            raise ValueError(f"an eps-prediction student needs alpha_T > 0, got {alpha_T}")
        self.timesteps = torch.tensor([-1])

    def set_timesteps(self, num_inference_steps=None, device=None):
        """The one timestep, -1, on device; num_inference_steps is ignored: the student needs one call."""
        self.timesteps = torch.tensor([-1], device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """The image latents from the UNet's prediction at the noise `sample`, in sample's dtype."""
        alpha, sigma, pred, eps = self.config.alpha_T, self.config.sigma_T, model_output.float(), sample.float()
        kind = self.config.prediction_type
        # boot.to_x0 at x_t = eps, written out (same operations, same Python-float coefficients: same bits).
        if kind == "epsilon":
            x0 = (eps - sigma * pred) / alpha
        elif kind == "v_prediction":
            x0 = alpha * eps - sigma * pred
        else:
            x0 = pred
        x0 = x0.to(sample.dtype)
        return SchedulerOutput(prev_sample=x0) if return_dict else (x0,)
