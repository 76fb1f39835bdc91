"""boot_diffusers.py: boot's bridge to diffusers: a student in diffusers' own pipelines, a teacher read exactly.

1. A train_sd.py run writes RUN/pipeline, a StableDiffusionPipeline folder (StableDiffusionXLPipeline for SDXL: the
   teacher's tokenizers, text encoders and VAE, the student UNet, diffusers' own LCMScheduler) that draws in one
   UNet call. Stock diffusers loads it in a fresh process, nothing of boot imported (DiffusionPipeline, the
   family's own class, AutoPipelineForText2Image), and draws with num_inference_steps=1 at a guidance_scale of the
   trained range:

    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("runs/sd/pipeline")
    images = pipe(["a lighthouse on a cliff at dawn"], num_inference_steps=1, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0)).images

   BootPipeline (BootXLPipeline for an SDXL folder; this file) loads the same folder and refuses what a one-step
   student cannot honour; the stock pipelines check nothing (their default is 50 steps). How the stock scheduler
   honours the student
   (one_step_scheduler, retime): with one step LCMScheduler calls the UNet at timestep n - 1 and turns its
   prediction into the sample at alphas_cumprod[n - 1], boot's alpha_T and sigma_T; the exported UNet reads its
   t = 0 (boot.Schedule.network_time: -1) at n - 1, its time embedding's first bias moved by the difference.
   Folders written before 2026-12-06 name BootOneStepScheduler (this file), which BootPipeline still reads.

2. read_scheduler turns a teacher's scheduler config into what boot.py needs (a Schedule, the prediction type,
   the clipping of x0, how the network is called) with the scheduler's own class, so its defaults are the ones
   diffusers applies. It reads three families:
   - variance preserving, discrete (alphas_cumprod: DDPM, DDIM, PNDM, Euler, DPMSolver... configs);
   - flow matching, FlowMatchEulerDiscreteScheduler with its `shift` (SD3): boot.Schedule.flow(shift), the
     network predicts the velocity ("flow_prediction") at timestep n sigma_t (n = num_train_timesteps);
   - EDM, EDMEulerScheduler: boot.Schedule.edm(sigma_max, rho), the network preconditioned here (unet_inputs):
     D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4), a "sample" (x0) teacher. Its sampler starts at
     x_T = sigma_max eps, as diffusers' Cosmos pipelines do (EDMEulerScheduler.init_noise_sigma is
     sqrt(sigma_max^2 + 1), the start of a variance-preserving reading, which no EDM pipeline uses).
   It refuses, in one line (UnsupportedTeacher), what boot cannot distil exactly: other families (variance
   exploding SDE, other flow or EDM schedulers), Karras/exponential/beta sigmas over a training schedule, dynamic
   shifting and stochastic sampling, beta schedules diffusers does not know, eps-prediction at zero terminal SNR.
   Conventions, stated here once:
   - Sampling is DDIM with "trailing" spacing and set_alpha_to_one (boot.Schedule.discrete), eta 0; for flow and
     EDM teachers diffusers' own Euler step, which is the DDIM step of their (alpha, sigma), on sampler_grid.
   - clip_sample / thresholding apply to the (guided) x0 of each step, and the step's eps is recomputed from
     that x0: diffusers' DDIMScheduler.step with use_clipped_model_output=True. Its default (False) keeps the
     unclipped eps, which adds the clipped-off part to every step whatever its size: no ODE step, and not a
     trajectory a student can learn independently of the step count.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import warnings
from typing import Callable, Optional

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")  # diffusers' names, as in boot.py
VP_PREDICTIONS = PREDICTIONS[:3]  # what a variance-preserving scheduler config may name
FLOW, EDM = "FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler"  # the classes of the other families boot reads
FAMILY_WORDS = {"vp": "variance-preserving", "flow": "flow-matching", "edm": "EDM"}
ONE_STEP_ONLY = ("BootOneStepScheduler draws from pure noise in one step: img2img and inpainting (an image noised "
                 "to a strength, then denoised) are not supported by a one-step BOOT student; use a text-to-image "
                 "pipeline (BootPipeline)")


class BootOneStepScheduler(SchedulerMixin, ConfigMixin):
    """One step from noise to the image latents with a BOOT student (train_sd.py's, boot.TeacherStudent): the
    scheduler of pipeline folders written before 2026-12-06, which stock diffusers loads only after
    `import boot_diffusers` (BootPipeline reads them; newer folders name LCMScheduler, see one_step_scheduler).

    The student g(eps, t, c) = to_x0(unet(eps, t n - 1, c), x_t = eps, alpha_T, sigma_T) is drawn at t = 0:
    - the pipeline's latents are the noise eps itself (init_noise_sigma 1, no input scaling);
    - the UNet reads them at timestep -1, the time input of t = 0 (boot.Schedule.network_time: t n - 1);
    - its prediction becomes the sample at the FIXED alpha_T, sigma_T of t = T (not at t = 0), in float32:
      epsilon: (eps - sigma_T pred) / alpha_T;  v_prediction: alpha_T eps - sigma_T pred;  sample: pred;
      flow_prediction: (eps - sigma_T pred) / (alpha_T + sigma_T) (train_sd.py refuses flow teachers, for now).
    Guidance reaches the student through its own input (time_cond_proj_dim): StableDiffusionPipeline then
    embeds w - 1 for it and runs no classifier-free guidance, so the UNet is called once whatever w is.
    guidance_range [WMIN, WMAX] (equal: one w) and guidance_scale, the w it was trained on and the default w, are
    what BootPipeline checks: the scheduler never sees w (None in configs written before them). One step whatever
    num_inference_steps asks for, with a warning for any other number; img2img and inpainting are refused."""

    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, prediction_type: str, alpha_T: float, sigma_T: float,
                 guidance_range: Optional[list] = None, guidance_scale: Optional[float] = None):
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTIONS}")
        if prediction_type == "epsilon" and not alpha_T > 0:
            raise ValueError(f"an eps-prediction student needs alpha_T > 0, got {alpha_T}")
        self.timesteps = torch.tensor([-1])

    def set_timesteps(self, num_inference_steps=None, device=None):
        """The one timestep, -1, on device. Another num_inference_steps gets a warning, not an error:
        StableDiffusionPipeline passes its default, 50, unasked, and its plain call must draw."""
        if num_inference_steps not in (None, 1):
            warnings.warn(f"num_inference_steps={num_inference_steps}: a BOOT student draws in one step, and takes "
                          "one; pass num_inference_steps=1 (BootPipeline refuses any other)", stacklevel=2)
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
        elif kind == "flow_prediction":
            x0 = (eps - sigma * pred) / (alpha + sigma)
        else:
            x0 = pred
        x0 = x0.to(sample.dtype)
        return SchedulerOutput(prev_sample=x0) if return_dict else (x0,)

    def set_begin_index(self, begin_index: int = 0):
        """Refused: diffusers' img2img and inpainting pipelines call it (to start part-way down the schedule) and its
        text-to-image ones do not, so this is where they stop, before an image is encoded."""
        raise NotImplementedError(ONE_STEP_ONLY)

    def add_noise(self, original_samples, noise, timesteps):
        """Refused (ONE_STEP_ONLY): the student starts from pure noise, never from a noised image."""
        raise NotImplementedError(ONE_STEP_ONLY)


BOOT_KEY = "_boot"  # a student's facts in its one-step scheduler's config: private, so stock diffusers ignores, keeps them


def one_step_scheduler(teacher_config: dict, *, prediction_type: str, alpha_T: float, sigma_T: float,
                       guidance_range: list, guidance_scale: float, guidance_input: bool = True):
    """diffusers' LCMScheduler that draws a BOOT student in its one step (num_inference_steps=1), stock in every way:
    - set_timesteps(1) gives timestep n - 1 (original_inference_steps n), the student's UNet reads it (retime);
    - step: the teacher's betas give alphas_cumprod[n - 1] = alpha_T^2, so its x0 of the prediction at the noise is
      boot's to_x0 at the fixed alpha_T, sigma_T (checked here); the consistency boundary's c_skip = 1 / (1 + (2 s)^2),
      s = timestep_scaling (n - 1), vanishes in float32 at timestep_scaling 1e6, c_out is 1: the sample is that x0;
    - no clipping or thresholding (the student's latents are not images), init_noise_sigma 1: the latents are eps.
    The trained guidance range and w ride in its config under BOOT_KEY for BootPipeline, and whether the UNet reads w
    (guidance_input; a LoRA student's fused UNet has one w baked in, and is drawn without the pipeline's guidance)."""
    if teacher_config.get("_class_name") == FLOW:
        return _flow_one_step(teacher_config, alpha_T=alpha_T, sigma_T=sigma_T, guidance_range=guidance_range,
                              guidance_scale=guidance_scale, guidance_input=guidance_input)
    from diffusers import LCMScheduler
    n = teacher_config["num_train_timesteps"]
    scheduler = LCMScheduler.from_config(dict(teacher_config), prediction_type=prediction_type, original_inference_steps=n,
                                         timestep_scaling=1e6, clip_sample=False, thresholding=False)
    scheduler.set_timesteps(1)
    alpha_bar = scheduler.alphas_cumprod[n - 1].double()
    if scheduler.timesteps.tolist() != [n - 1] or not (math.isclose(alpha_bar.sqrt().item(), alpha_T, rel_tol=1e-5, abs_tol=1e-6)
                                                       and math.isclose((1 - alpha_bar).sqrt().item(), sigma_T, rel_tol=1e-5)):
        raise UnsupportedTeacher(f"LCMScheduler's one step at timestep {scheduler.timesteps.tolist()} (alpha "
                                 f"{alpha_bar.sqrt().item():.6g}) is not the student's t = T (timestep {n - 1}, alpha_T "
                                 f"{alpha_T:.6g}): this teacher's schedule has no stock one-step scheduler")
    scheduler.register_to_config(**{BOOT_KEY: dict(guidance_range=list(guidance_range), guidance_scale=guidance_scale,
                                                   guidance_input=guidance_input, unet_timestep=n - 1, trained_timestep=-1)})
    return scheduler


def _flow_one_step(teacher_config: dict, *, alpha_T: float, sigma_T: float, guidance_range: list, guidance_scale: float,
                   guidance_input: bool):
    """A flow-matching teacher's own FlowMatchEulerDiscreteScheduler, which with one step draws the student exactly:
    sigma 1 to 0 at timestep n, x0 = eps - v, boot's to_x0 of a velocity at alpha_T = 0, sigma_T = 1 (checked). The
    student reads its t = 0 at timestep 0 (n sigma_0), moved to n (retime)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(teacher_config))
    scheduler.set_timesteps(1)
    if scheduler.sigmas.tolist() != [1.0, 0.0] or (alpha_T, sigma_T) != (0.0, 1.0):
        raise UnsupportedTeacher(f"FlowMatchEulerDiscreteScheduler's one step runs sigma {scheduler.sigmas.tolist()}, the "
                                 f"student's t = T has alpha {alpha_T}, sigma {sigma_T}: no stock one-step scheduler")
    scheduler.register_to_config(**{BOOT_KEY: dict(guidance_range=list(guidance_range), guidance_scale=guidance_scale,
                                                   guidance_input=guidance_input,
                                                   unet_timestep=scheduler.timesteps[0].item(), trained_timestep=0.0)})
    return scheduler


def time_layers(unet):
    """(the sinusoidal features of the timestep, the first layer reading them) of a UNet2DConditionModel or an
    SD3Transformer2DModel; UnsupportedTeacher where the timestep enters otherwise."""
    if hasattr(unet, "time_text_embed"):  # SD3's transformer: its timestep embedder, beside the pooled text's
        return unet.time_text_embed.time_proj, unet.time_text_embed.timestep_embedder.linear_1
    config, layer = unet.config, getattr(getattr(unet, "time_embedding", None), "linear_1", None)
    if config.get("time_embedding_type", "positional") != "positional" or layer is None or \
            config.get("class_embed_type") == "timestep" or not hasattr(unet, "time_proj"):
        raise UnsupportedTeacher(f"a {type(unet).__name__} whose timestep enters other than through its sinusoidal "
                                 "time embedding: its student cannot be moved to the stock scheduler's timestep")
    return unet.time_proj, layer


@torch.no_grad()
def retime(unet, *, old: float, new: float):
    """In place: the UNet at timestep `new` computes what it computed at `old`. Its time embedding's first layer
    reads the sinusoidal features phi(t) (time_proj); its bias absorbs W (phi(old) - phi(new)), in float64, stored in
    its dtype: exact at `new` up to that rounding, and every other timestep moves too (a one-step student is read
    at one). A guidance input (time_cond_proj_dim) adds to phi before that layer: it reads the same w as before."""
    time_proj, layer = time_layers(unet)
    phi = time_proj(torch.tensor([old, new], dtype=torch.float32, device=layer.weight.device)).double()
    layer.bias.copy_((layer.bias.double() + layer.weight.double() @ (phi[0] - phi[1])).to(layer.bias.dtype))


def student_facts(scheduler_config) -> dict:
    """What a run recorded in its pipeline folder's scheduler: guidance_range, guidance_scale and, in LCMScheduler or
    flow-matching folders, the timestep the exported network reads its t = 0 at (unet_timestep), the trained one, and
    whether it reads w (guidance_input); {} for a
    scheduler no run wrote. BootOneStepScheduler folders (before 2026-12-06) keep the trained timestep, -1."""
    config = dict(scheduler_config)
    if BOOT_KEY in config:
        return dict(config[BOOT_KEY])
    if config.get("_class_name", "BootOneStepScheduler") == "BootOneStepScheduler" and "guidance_range" in config:
        return dict(guidance_range=config["guidance_range"], guidance_scale=config["guidance_scale"],
                    unet_timestep=-1, trained_timestep=-1)
    return {}


BOOT_PIPELINES = {"BootPipeline": "StableDiffusionPipeline", "BootXLPipeline": "StableDiffusionXLPipeline",
                  "BootSD3Pipeline": "StableDiffusion3Pipeline"}


def _pipeline_class(name: str):
    """BootPipeline or BootXLPipeline, built on first use: importing diffusers' pipelines takes seconds and pulls in
    transformers' image processors, which warn when torchvision is missing (nothing these pipelines use), and
    read_scheduler's users (train_sd.py, train_toy.py) need none of it."""
    import diffusers
    from transformers.utils import logging as transformers_logging
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        stock = getattr(diffusers, BOOT_PIPELINES[name])
    finally:
        transformers_logging.set_verbosity(level)

    class Boot(stock):
        __doc__ = f"""{stock.__name__} for a BOOT student that refuses, with a ValueError, what it cannot honour:
        num_inference_steps other than 1; a negative prompt or any other negative_* input (the student has guidance
        built in, with no unconditional branch to steer away from: the stock pipeline drops them unseen); a
        guidance_scale outside the range recorded in its scheduler (student_facts; the stock pipeline
        extrapolates, from its default too). guidance_scale defaults to the run's w; height and width, like the
        stock pipeline's, to the UNet's sample_size times the VAE's scale (train_sd.py records the trained
        resolution there). Arguments past the prompt are keywords. Saved, it is a {stock.__name__} folder: every
        diffusers loader reads it."""

        def __call__(self, prompt=None, *, num_inference_steps: int = 1, guidance_scale: Optional[float] = None,
                     **kwargs):
            facts = student_facts(self.scheduler.config)
            trained, default = facts.get("guidance_range"), facts.get("guidance_scale")
            if trained is None or default is None:
                raise ValueError(f"{name}: the scheduler ({type(self.scheduler).__name__}) records no trained "
                                 "guidance range; expected the pipeline folder of a train_sd.py run")
            w = default if guidance_scale is None else guidance_scale
            if num_inference_steps != 1:
                raise ValueError(f"num_inference_steps={num_inference_steps}: a BOOT student draws in one step; "
                                 "pass 1 (or leave it out)")
            negative = [key for key, value in kwargs.items() if key.startswith("negative_") and value is not None]
            if negative:
                raise ValueError(f"{negative[0]}: a BOOT student has guidance built in, with no unconditional branch "
                                 "a negative input could replace; it cannot honour one")
            lo, hi = trained
            if not lo <= w <= hi:
                raise ValueError(f"guidance_scale={w}: this student was trained at w = {lo} only" if lo == hi else
                                 f"guidance_scale={w} is outside the range this student was trained on, "
                                 f"[{lo}, {hi}]")
            # a UNet with one w baked in is called as it is: a stock guidance_scale above 1 would guide around it
            return super().__call__(prompt, num_inference_steps=1, guidance_scale=w if facts.get("guidance_input", True)
                                    else 1.0, **kwargs)

        def to_json_string(self) -> str:
            """model_index.json names the stock class, so that a re-saved pipeline (fp16, push_to_hub) still loads
            with DiffusionPipeline and AutoPipelineForText2Image."""
            config = json.loads(super().to_json_string())
            return json.dumps({**config, "_class_name": stock.__name__}, indent=2, sort_keys=True) + "\n"

    Boot.__module__, Boot.__name__, Boot.__qualname__ = __name__, name, name
    return Boot


def __getattr__(name):
    if name in BOOT_PIPELINES:  # from boot_diffusers import BootPipeline: built once, then an ordinary global
        globals()[name] = _pipeline_class(name)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------------
# Reading a teacher.

# Schedules that change the sampler's noise levels away from the training betas: not the teacher DDIM runs.
class UnsupportedTeacher(ValueError):
    """A teacher boot cannot distil exactly, or a config that does not load: the message says which, in one line."""


_OTHER_SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")
# Settings of the flow and EDM schedulers under which they sample something else than the ODE boot reads.
_NOT_READ = {
    "use_dynamic_shifting": "shifts its sigmas by the image size at sampling time (dynamic shifting, as FLUX); boot "
                            "reads a fixed shift only",
    "shift_terminal": "stretches its shifted sigmas to end at shift_terminal; boot reads the plain shift only",
    "invert_sigmas": "inverts its sigmas; boot reads sigma_T = 1 at t = T only",
    "stochastic_sampling": "samples stochastically; boot distils the deterministic flow ODE only",
}


@dataclasses.dataclass(frozen=True)
class TeacherSchedule:
    """What a diffusers scheduler config says about its teacher, in boot's terms."""
    schedule: boot.Schedule  # a string under `from __future__ import annotations`: boot is not imported here
    prediction: str                                      # epsilon | v_prediction | sample | flow_prediction
    clip: Optional[Callable[[torch.Tensor], torch.Tensor]]  # x0 -> clipped x0 (clip_sample, thresholding), or None
    scheduler: object                                    # the diffusers scheduler the config built
    family: str = "vp"                                   # vp | flow | edm

    def unet_inputs(self, t):
        """Flow and EDM teachers at boot times t: (c_in, timestep, c_skip, c_out), float32 tensors shaped like t, so
        that the prediction of kind self.prediction is c_skip x + c_out unet(c_in x, timestep).sample (the
        variance-preserving teacher reads boot.Schedule.teacher_time(t) and needs none of this).
        - flow: (1, n sigma_t, 0, 1), diffusers' timestep of sigma_t (FlowMatchEulerDiscreteScheduler);
        - EDM (Karras et al. 2022, diffusers' precondition_inputs/_noise/_outputs): c_in = 1 / sqrt(sigma^2 + sd^2),
          timestep c_noise = log(sigma) / 4, c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2)
          (negated for its v_prediction), sd = sigma_data: the denoiser D, a "sample" prediction."""
        sigma, config = self.schedule.coefficients(torch.as_tensor(t).double())[1], self.scheduler.config
        if self.family == "flow":
            return torch.ones_like(sigma).float(), (config.num_train_timesteps * sigma).float(), \
                torch.zeros_like(sigma).float(), torch.ones_like(sigma).float()
        if self.family != "edm":
            raise ValueError("a variance-preserving teacher reads boot.Schedule.teacher_time(t); it has no unet_inputs")
        sd, norm = config.sigma_data, (sigma ** 2 + config.sigma_data ** 2).sqrt()
        sign = -1 if config.prediction_type == "v_prediction" else 1
        return (1 / norm).float(), (sigma.log() / 4).float(), (sd ** 2 / norm ** 2).float(), (sign * sigma * sd / norm).float()

    def finish(self, teacher):
        """The teacher as diffusers steps it: its (guided) x0, clipped where the config says so."""
        if self.clip is None:
            return teacher
        return lambda x_t, t, cond=None: self.clip(teacher(x_t, t, cond))


def dynamic_threshold(x0, *, ratio: float, max_value: float):
    """Imagen's dynamic thresholding as diffusers applies it: s = the ratio-quantile of |x0| per sample,
    clamped to [1, max_value]; x0 -> clamp(x0, -s, s) / s."""
    flat = x0.float().flatten(1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def read_scheduler(source, *, subfolder: Optional[str] = None, what: str = "the teacher") -> TeacherSchedule:
    """The scheduler config of `source` (hub id or folder) read with its own diffusers class; UnsupportedTeacher
    (one line naming `what` and the problem) for anything boot would get wrong."""
    import diffusers
    try:
        with quiet_hub():
            config = diffusers.DDPMScheduler.load_config(source, subfolder=subfolder)
    except Exception as e:  # missing file, bad JSON, offline hub
        offline = hub_unreachable(e)
        if offline:
            raise UnsupportedTeacher(f"{what}: {offline}") from None
        raise UnsupportedTeacher(f"{what}: its scheduler config does not load ({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
    return scheduler_from_config(dict(config), what=what)


@contextlib.contextmanager
def quiet_hub():
    """No warning that diffusers passes huggingface_hub a deprecated argument (local_dir_use_symlinks): noise,
    printed before the one line that says why a load failed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
        yield


def hub_unreachable(error: BaseException) -> Optional[str]:
    """Where a load failed because the hub could not be reached and nothing of the model is cached, that, in words
    (with what to do instead); else None. huggingface_hub says so (LocalEntryNotFoundError, OfflineModeIsEnabled)
    in an exception that diffusers' message hides ("does not appear to have a file named ...")."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    offline = any(isinstance(e, OfflineModeIsEnabled) for e in chain)
    if not offline and not any(isinstance(e, LocalEntryNotFoundError) for e in chain):
        return None
    why = "HF_HUB_OFFLINE is set" if offline else "no network, or it did not answer"
    return (f"the hub could not be reached ({why}) and nothing of it is cached; pass a local folder in diffusers' "
            "layout instead (one written by save_pretrained, or a copy of the model's files)")


def scheduler_from_config(config: dict, *, what: str = "the teacher") -> TeacherSchedule:
    """read_scheduler on a config dict already in hand."""
    import diffusers
    import boot  # here, not at the top: the scheduler above must load without boot.py
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UnsupportedTeacher(f"{what}: unknown scheduler class {name!r}")
    for flag in _OTHER_SIGMAS:
        if config.get(flag):
            raise UnsupportedTeacher(f"{what}: {name} with {flag}=true samples other noise levels than its training "
                             "schedule; boot distils the DDIM of the training schedule only")
    if config.get("timestep_type", "discrete") != "discrete":
        raise UnsupportedTeacher(f"{what}: {name} with timestep_type={config['timestep_type']!r} is not a discrete-time "
                         "teacher; boot reads discrete variance-preserving schedules only")
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)  # no warning about another class's keys: what matters is refused below, in one line
    try:
        scheduler = cls.from_config(config)
    except NotImplementedError as e:  # diffusers' word for an unknown beta_schedule
        raise UnsupportedTeacher(f"{what}: {name}: {e}") from None
    except Exception as e:
        raise UnsupportedTeacher(f"{what}: {name} does not build from its config ({str(e).splitlines()[0][:200]})") from None
    finally:
        log.setLevel(level)
    if name in (FLOW, EDM):
        return _flow_or_edm(scheduler, name, what)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise UnsupportedTeacher(f"{what}: {name} is not a variance-preserving discrete-time schedule, nor one of the "
                                 f"flow-matching and EDM schedulers boot reads ({FLOW}, {EDM})")
    # Only the settings the class itself takes: from_config keeps the others too, and PNDM (SD's) has no clip_sample.
    own = {k: v for k, v in scheduler.config.items() if k in inspect.signature(cls.__init__).parameters}
    prediction = own.get("prediction_type", "epsilon")
    if prediction not in VP_PREDICTIONS:
        raise UnsupportedTeacher(f"{what}: unsupported prediction type {prediction!r}; boot reads {', '.join(VP_PREDICTIONS)} "
                                 f"of a variance-preserving schedule (a flow teacher: {FLOW})")
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clone()
    if own.get("rescale_betas_zero_snr"):
        alphas_cumprod[-1] = 0  # Euler-type schedulers store 2^-24 for the zero they mean
    if alphas_cumprod[-1] == 0 and prediction == "epsilon":
        raise UnsupportedTeacher(f"{what}: zero terminal SNR with eps-prediction is undefined at t = T (x0 = (x - sigma eps) "
                         "/ alpha with alpha_T = 0); use a v_prediction or sample teacher")
    try:
        schedule = boot.Schedule.discrete(alphas_cumprod)
    except ValueError as e:
        raise UnsupportedTeacher(f"{what}: {name}: {e}") from None
    return TeacherSchedule(schedule, prediction, _clip(own), scheduler)


def _flow_or_edm(scheduler, name: str, what: str) -> TeacherSchedule:
    """A FlowMatchEulerDiscreteScheduler or EDMEulerScheduler teacher (see the top of this file), or UnsupportedTeacher."""
    import boot
    config = scheduler.config
    for key, why in _NOT_READ.items():
        if config.get(key):
            raise UnsupportedTeacher(f"{what}: {name} with {key}={config[key]!r} {why}")
    try:  # boot.Schedule names an impossible shift, sigma_max or rho
        schedule = boot.Schedule.flow(float(config.shift)) if name == FLOW else \
            boot.Schedule.edm(float(config.sigma_max), float(config.rho))
    except ValueError as e:
        raise UnsupportedTeacher(f"{what}: {name}: {e}") from None
    if name == FLOW:
        return TeacherSchedule(schedule, "flow_prediction", None, scheduler, "flow")
    if config.prediction_type not in ("epsilon", "v_prediction"):
        raise UnsupportedTeacher(f"{what}: {name} with prediction_type={config.prediction_type!r}; its "
                                 "preconditioning is defined for epsilon and v_prediction only")
    if config.final_sigmas_type != "zero":
        raise UnsupportedTeacher(f"{what}: {name} with final_sigmas_type={config.final_sigmas_type!r} ends at sigma_min, "
                                 "not at the data; boot distils trajectories that end at sigma = 0 only")
    return TeacherSchedule(schedule, "sample", None, scheduler, "edm")


def sampler_grid(read: TeacherSchedule, scheduler) -> torch.Tensor:
    """The ascending float64 boot grid (0 = t_0 < ... < t_N = 1) of a flow or EDM scheduler's own N steps, after its
    set_timesteps(N): its sigmas at boot's t (flow: the inverse shift t = sigma / (shift - (shift - 1) sigma); EDM:
    t = (sigma / sigma_max)^(1 / rho)), for boot.ddim_sample(..., grid=) or boot.fixed_point."""
    sigmas, config = scheduler.sigmas.double().flip(0), scheduler.config
    if read.family == "flow":
        return sigmas / (config.shift - (config.shift - 1) * sigmas)
    if read.family == "edm":
        return (sigmas / config.sigma_max) ** (1 / config.rho)
    raise ValueError("sampler_grid reads flow and EDM schedulers; a variance-preserving one steps on boot.time_grid")


def _clip(config: dict) -> Optional[Callable]:
    """The x0 clipping a scheduler config asks for (thresholding wins over clip_sample, as in diffusers)."""
    if config.get("thresholding"):
        ratio, max_value = config.get("dynamic_thresholding_ratio", 0.995), config.get("sample_max_value", 1.0)
        return lambda x0: dynamic_threshold(x0, ratio=ratio, max_value=max_value)
    if config.get("clip_sample"):
        r = config.get("clip_sample_range", 1.0)
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise UnsupportedTeacher(f"the scheduler's clip_sample_range must be a positive number, got {r!r}")
        return lambda x0: x0.clamp(-r, r)
    return None

