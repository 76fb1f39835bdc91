"""bootkit/pixel.py: a diffusers pixel teacher (UNet2DModel and its scheduler) as boot.py sees it, and the student
that starts as a copy of it (train_toy.py --teacher, teachers/train_teacher.py's figures, the benchmark)."""
import logging

import torch

import boot
from bootkit.runtime import UsageError


def _per_sample(c, x):
    return c.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class DiffusersNet(torch.nn.Module):
    """net(x, time, cond) -> prediction, for diffusers' UNet2DModel (which returns `.sample`). time is the timestep
    (a variance-preserving teacher: boot.Schedule.teacher_time) or, given the boot_diffusers.TeacherSchedule `read` of
    a flow or EDM teacher, boot's t, read there into the UNet's input scale, timestep and output preconditioning."""

    def __init__(self, unet, read=None):
        super().__init__()
        self.unet, self.read = unet, read if read is not None and read.family != "vp" else None

    def forward(self, x, time, cond=None):
        if self.read is None:
            return self.unet(x, time.expand(len(x))).sample
        c_in, timestep, c_skip, c_out = self.read.unet_inputs(time.expand(len(x)))
        out = self.unet(_per_sample(c_in, x) * x, timestep.to(x.device)).sample
        return _per_sample(c_skip, x) * x + _per_sample(c_out, x) * out


class AnchoredNet(torch.nn.Module):
    """The student side of boot.TeacherStudent(anchor=t_a): a copy of the teacher's UNet2DModel that always reads
    its input at the timestep of t_a, and the student's time through a new time embedding (diffusers'
    class_embed_type "timestep") whose last layer starts at zero, so that it starts as the teacher read at t_a.
    A flow or EDM teacher (`read`) is read as DiffusersNet reads it, at t_a's fixed input scale, timestep and
    preconditioning; the student's t in [0, 1] then enters the embedding as 1000 t (diffusers' timestep scale)."""

    def __init__(self, unet, schedule: boot.Schedule, anchor: float, read=None):
        super().__init__()
        from diffusers import UNet2DModel
        if unet.config.class_embed_type is not None or unet.config.num_class_embeds:
            raise UsageError("--init-from-teacher: a class-conditional UNet2DModel cannot take the student's "
                             "time embedding")
        self.unet = UNet2DModel.from_config({**unet.config, "class_embed_type": "timestep"}).to(unet.device)
        self.unet.load_state_dict(unet.state_dict(), strict=False)  # all but the new class_embedding
        torch.nn.init.zeros_(self.unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(self.unet.class_embedding.linear_2.bias)
        self.read = read if read is not None and read.family != "vp" else None
        if self.read is None:
            self.register_buffer("timestep", schedule.teacher_time(torch.tensor([anchor])), persistent=False)
        else:
            c_in, timestep, c_skip, c_out = read.unet_inputs(torch.tensor([anchor], dtype=torch.float64))
            self.register_buffer("timestep", timestep, persistent=False)
            self.c_in, self.c_skip, self.c_out = c_in.item(), c_skip.item(), c_out.item()

    def forward(self, x, time, cond=None):
        if self.read is None:
            return self.unet(x, self.timestep.expand(len(x)), class_labels=time.expand(len(x))).sample
        out = self.unet(self.c_in * x, self.timestep.expand(len(x)), class_labels=1000 * time.expand(len(x))).sample
        return self.c_skip * x + self.c_out * out


def load_pixel_teacher(source: str, device):
    """(UNet2DModel, boot_diffusers.TeacherSchedule) from a hub id or folder: the pipeline layout (unet/,
    scheduler/) or the flat one of google/ddpm-cifar10-32 (config.json and scheduler_config.json side by side)."""
    import boot_diffusers  # imports diffusers: seconds, which the exact teachers need not wait
    from diffusers import UNet2DModel
    errors, log = [], logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.CRITICAL)  # diffusers logs each failed attempt; the one error line below says it all
    try:
        for sub in ("unet", None):
            try:  # safetensors only: a pickled .bin can run arbitrary code
                with boot_diffusers.quiet_hub():
                    unet = UNet2DModel.from_pretrained(source, subfolder=sub, use_safetensors=True)
                break
            except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError... keep the first cause
                errors.append(e)
        else:
            offline = boot_diffusers.hub_unreachable(errors[0])
            if offline:
                raise UsageError(f"--teacher {source!r}: {offline}")
            first = str(errors[0]).splitlines()[0] if str(errors[0]) else type(errors[0]).__name__
            raise UsageError(f"--teacher {source!r} is not a loadable diffusers UNet2DModel ({first})")
        teacher = boot_diffusers.read_scheduler(source, subfolder="scheduler" if sub else None, what=f"--teacher {source!r}")
    except boot_diffusers.UnsupportedTeacher as e:
        raise UsageError(str(e)) from None
    finally:
        log.setLevel(level)
    return unet.to(device).eval().requires_grad_(False), teacher


def pixel_teacher(unet, read) -> boot.Teacher:
    """f(x_t, t) -> x0 as diffusers' DDIM computes it from this UNet and its boot_diffusers.TeacherSchedule
    (clipping included)."""
    return read.finish(boot.denoiser(DiffusersNet(unet, read), read.schedule, prediction=read.prediction))


def load(folder, device):
    """(boot teacher, schedule) of a saved pipeline: the teacher exactly as train_toy.py distils it (x0 clipped as
    diffusers' DDIM clips it)."""
    unet, read = load_pixel_teacher(str(folder), device)
    return pixel_teacher(unet, read), read.schedule
