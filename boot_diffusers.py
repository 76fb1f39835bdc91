"""boot_diffusers.py: boot.py's bridge to diffusers: the teacher a scheduler config describes, read exactly.

A diffusers teacher is a network plus a scheduler config. read_scheduler turns the config into what boot.py
needs (a Schedule, the prediction type, the clipping of x0) with the scheduler's own class, so its defaults
are the ones diffusers applies, and refuses, in one line, what boot cannot distil exactly: schedules of
another family (variance-exploding, flow matching, EDM/Karras sigmas), beta schedules diffusers does not
know, and eps-prediction at zero terminal SNR. Conventions, stated here once:
- Sampling is DDIM with "trailing" spacing and set_alpha_to_one (boot.Schedule.discrete), eta 0.
- clip_sample / thresholding apply to the (guided) x0 of each step, and the step's eps is recomputed from
  that x0: diffusers' DDIMScheduler.step with use_clipped_model_output=True. Its default (False) keeps the
  unclipped eps, which adds the clipped-off part to every step whatever its size: no ODE step, and not a
  trajectory a student can learn independently of the step count.
"""
import dataclasses
import inspect
import math
from typing import Callable, Optional

import torch

import boot
from runtime import UsageError

# Schedules that change the sampler's noise levels away from the training betas: not the teacher DDIM runs.
_OTHER_SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


@dataclasses.dataclass(frozen=True)
class TeacherSchedule:
    """What a diffusers scheduler config says about its teacher, in boot's terms."""
    schedule: boot.Schedule
    prediction: str                                      # epsilon | v_prediction | sample
    clip: Optional[Callable[[torch.Tensor], torch.Tensor]]  # x0 -> clipped x0 (clip_sample, thresholding), or None
    scheduler: object                                    # the diffusers scheduler the config built

    def finish(self, teacher: boot.Teacher) -> boot.Teacher:
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
    """The scheduler config of `source` (hub id or folder) read with its own diffusers class; UsageError
    (one line naming `what` and the problem) for anything boot would get wrong."""
    import diffusers
    try:
        config = diffusers.DDPMScheduler.load_config(source, subfolder=subfolder)
    except Exception as e:  # missing file, bad JSON, offline hub
        raise UsageError(f"{what}: no scheduler config loads ({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
    return scheduler_from_config(dict(config), what=what)


def scheduler_from_config(config: dict, *, what: str = "the teacher") -> TeacherSchedule:
    """read_scheduler on a config dict already in hand."""
    import diffusers
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UsageError(f"{what}: unknown scheduler class {name!r}")
    for flag in _OTHER_SIGMAS:
        if config.get(flag):
            raise UsageError(f"{what}: {name} with {flag}=true samples other noise levels than its training "
                             "schedule; boot distils the DDIM of the training schedule only")
    if config.get("timestep_type", "discrete") != "discrete":
        raise UsageError(f"{what}: {name} with timestep_type={config['timestep_type']!r} is not a discrete-time "
                         "teacher; boot reads discrete variance-preserving schedules only")
    try:
        scheduler = cls.from_config(config)
    except NotImplementedError as e:  # diffusers' word for an unknown beta_schedule
        raise UsageError(f"{what}: {name}: {e}") from None
    except Exception as e:
        raise UsageError(f"{what}: {name} does not build from its config ({str(e).splitlines()[0][:200]})") from None
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise UsageError(f"{what}: {name} is not a variance-preserving discrete-time schedule (variance-exploding, "
                         "flow matching or EDM); boot reads schedules with alphas_cumprod only")
    # Only the settings the class itself takes: from_config keeps the others too, and PNDM (SD's) has no clip_sample.
    own = {k: v for k, v in scheduler.config.items() if k in inspect.signature(cls.__init__).parameters}
    prediction = own.get("prediction_type", "epsilon")
    if prediction not in boot.PREDICTIONS:
        raise UsageError(f"{what}: unsupported prediction type {prediction!r}; boot reads {', '.join(boot.PREDICTIONS)}")
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clone()
    if own.get("rescale_betas_zero_snr"):
        alphas_cumprod[-1] = 0  # Euler-type schedulers store 2^-24 for the zero they mean
    if alphas_cumprod[-1] == 0 and prediction == "epsilon":
        raise UsageError(f"{what}: zero terminal SNR with eps-prediction is undefined at t = T (x0 = (x - sigma eps) "
                         "/ alpha with alpha_T = 0); use a v_prediction or sample teacher")
    try:
        schedule = boot.Schedule.discrete(alphas_cumprod)
    except ValueError as e:
        raise UsageError(f"{what}: {name}: {e}") from None
    return TeacherSchedule(schedule, prediction, _clip(own), scheduler)


def _clip(config: dict) -> Optional[Callable]:
    """The x0 clipping a scheduler config asks for (thresholding wins over clip_sample, as in diffusers)."""
    if config.get("thresholding"):
        ratio, max_value = config.get("dynamic_thresholding_ratio", 0.995), config.get("sample_max_value", 1.0)
        return lambda x0: dynamic_threshold(x0, ratio=ratio, max_value=max_value)
    if config.get("clip_sample"):
        r = config.get("clip_sample_range", 1.0)
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise UsageError(f"the scheduler's clip_sample_range must be a positive number, got {r!r}")
        return lambda x0: x0.clamp(-r, r)
    return None

