"""bench/bench_precision.py: how far a student that starts from the teacher moves under bf16 autocast (issue: fp32 where
the parameterization amplifies errors). Prints RMS(g_bf16(eps, 0) - g_fp32(eps, 0)), absolute (data units) and relative to RMS(g_fp32(eps, 0)).

    python bench/bench_precision.py            # random tiny SD UNet (SD 1.x schedule) and a 32x32 pixel UNet (1,000 linear betas)
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's root: boot.py

import torch

import boot


def nets():
    """(name, net(x, time, cond) -> prediction, noise, cond, schedule) for the two teachers measured."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
    torch.manual_seed(0)
    sd = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8,
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    sd_schedule = boot.Schedule.discrete(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                       beta_end=0.012).alphas_cumprod)
    pixel = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).eval()
    pixel_schedule = boot.Schedule.discrete(DDPMScheduler().alphas_cumprod)
    cond = torch.randn(16, 7, 32)
    yield ("tiny SD UNet, 4x16x16 latents", lambda x, t, c: sd(x, t, encoder_hidden_states=c).sample,
           torch.randn(16, 4, 16, 16), cond, sd_schedule)
    yield ("32x32 pixel UNet2DModel", lambda x, t, c: pixel(x, t).sample, torch.randn(16, 3, 32, 32), None,
           pixel_schedule)


def old_student(net, schedule):
    """boot.TeacherStudent before the fix: the conversion in whatever dtype the network returned."""
    student = boot.TeacherStudent(net, schedule, prediction="epsilon")
    return lambda eps, t, c: boot.to_x0(net(eps, schedule.network_time(t), c), kind="epsilon", x_t=eps,
                                        alpha=student.alpha_a, sigma=student.sigma_a)


@torch.no_grad()
def main():
    print("| teacher | sigma_T / alpha_T | RMS of g(eps, 0) in fp32 | bf16 error, conversion in the net's dtype (before) "
          "| bf16 error, fp32 conversion (now) | read at lambda = 0 (anchor): RMS of g, bf16 error |\n|---|---|---|---|---|---|")
    for name, net, eps, cond, schedule in nets():
        t0 = torch.zeros(len(eps))
        alpha_T, sigma_T, _ = schedule.coefficients(torch.ones(1, dtype=torch.float64))
        new = boot.TeacherStudent(net, schedule, prediction="epsilon")
        reference = new(eps, t0, cond)
        scale = reference.pow(2).mean().sqrt().item()
        errors = []
        for student in (old_student(net, schedule), new):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = student(eps, t0, cond).float()
            error = (y - reference).pow(2).mean().sqrt().item()
            errors.append(f"{error:.3f} ({error / scale:.2%})")
        anchor = schedule.snap(schedule.time_of(0.0)).item()  # train_toy --init-from-teacher's student
        at_anchor = lambda x, time, c: net(x, schedule.teacher_time(torch.full((len(x),), anchor)), c)
        anchored = boot.TeacherStudent(at_anchor, schedule, prediction="epsilon", anchor=anchor)
        reference = anchored(eps, t0, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            error = (anchored(eps, t0, cond).float() - reference).pow(2).mean().sqrt().item()
        print(f"| {name} | {(sigma_T / alpha_T).item():.1f} | {scale:.2f} | {errors[0]} | {errors[1]} "
              f"| {reference.pow(2).mean().sqrt().item():.2f}, {error:.3f} |")


if __name__ == "__main__":
    main()
