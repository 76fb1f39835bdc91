"""bench/sd_step.py: one BOOT step at Stable-Diffusion-1.5 or SDXL shape against the sum of its parts (BOOT.md
sections 4, 7), for bench_sd.py and benchmark.py; the full student (a float32 copy beside the teacher) or a LoRA
student (adapters on the teacher's own UNet, the teacher its base with the adapters off: one copy of the weights).

Random weights: this measures speed and memory, not quality. The parts: the teacher's guided call (both CFG
branches in one batch of 2B), the student's call without gradient, and the student's forward + backward +
AdamW. The whole step is bootkit.sd.boot_sd_loss (what training runs) with the same backward and update, so
it should equal the sum.
"""
import copy
import statistics
import time

import torch

import boot
from bootkit import sd

SD15 = dict(sample_size=64, cross_attention_dim=768)  # and UNet2DConditionModel's defaults: SD 1.5's UNet, 860 M


SDXL = dict(sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)  # SDXL base's UNet, 2.6 B
TINY = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_XL = {**TINY, "cross_attention_dim": 64, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
           "projection_class_embeddings_input_dim": 6 * 8 + 32}
SHAPES = {"sd15": (SD15, TINY), "sdxl": (SDXL, TINY_XL)}


TEXT_TOKENS = 77


REFERENCE = "H100, BOOT.md section 7: 329 ms per step, 17.9 GiB with checkpointing (268 ms, 25.6 GiB without)"


def timed(fn, device, reps: int) -> float:
    """Median milliseconds of fn() over reps runs, after one warm-up run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run(device="cuda", batch: int = 8, tiny: bool = False, checkpointing: bool = True, reps: int = 5,
        dtype=torch.bfloat16, shape: str = "sd15", lora_rank: int = 0) -> dict:
    """Time the parts of one BOOT step and the whole step; peak memory on CUDA. Returns the figures."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    device = torch.device(device)
    torch.manual_seed(0)
    config = SHAPES[shape][tiny]
    # nn.Module.to: diffusers' own .to(dtype) warns about float32-only modules even where there are none.
    if lora_rank:  # train_sd --lora-rank: the teacher's own UNet in its dtype, float32 adapters
        teacher_unet = torch.nn.Module.to(UNet2DConditionModel(**config), device, dtype).eval()
        student = sd.add_lora(teacher_unet, lora_rank)
    else:
        student = UNet2DConditionModel(**config).to(device)  # float32 master weights
        teacher_unet = torch.nn.Module.to(copy.deepcopy(student), dtype).eval().requires_grad_(False)
    if checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    sd_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # SD 1.x's
    schedule = boot.Schedule.discrete(sd_scheduler.alphas_cumprod)
    grid = boot.time_grid(schedule, 64).to(device)
    teacher = sd.teacher_fn(teacher_unet, schedule, "epsilon", lora_base=bool(lora_rank))

    size, width = config["sample_size"], student.config.cross_attention_dim
    eps = torch.randn(batch, student.config.in_channels, size, size, device=device)
    # SDXL's conditioning packs the pooled text and time ids as one more token (sd.PromptEncoder): random here too
    tokens = TEXT_TOKENS + (config.get("addition_embed_type") == sd.XL)
    cond = torch.randn(batch, tokens, width, device=device, dtype=dtype)  # training caches them in this dtype
    null = torch.randn(1, tokens, width, device=device, dtype=dtype)
    w = torch.full((batch,), 7.5, device=device)
    k = torch.randint(1, len(grid), (batch,), device=device)
    t, s, target = grid[k].float(), grid[k - 1].float(), torch.randn_like(eps)
    g, guided = sd.student_fn(student, schedule, "epsilon", w), boot.guided(teacher, scale=w, null_cond=null)

    @torch.no_grad()
    def teacher_call():
        with sd.autocast(device, dtype):
            guided(eps, t, cond)

    @torch.no_grad()
    def student_call():
        with sd.autocast(device, dtype):
            g(eps, t, cond)

    def update(loss):  # as runtime.Trainer does
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
        optimizer.step()

    def student_train():  # the loss under autocast, the backward outside it: as in training
        with sd.autocast(device, dtype):
            loss = (g(eps, s, cond) - target).float().pow(2).mean()
        update(loss)

    def whole_step():
        loss, _ = sd.boot_sd_loss(student, teacher, eps=eps, cond=cond, w=w, k=k, schedule=schedule, grid=grid,
                                        prediction="epsilon", null_cond=null, dtype=dtype)
        update(loss)

    cuda = device.type == "cuda"
    parts = dict(teacher_ms=timed(teacher_call, device, reps), student_call_ms=timed(student_call, device, reps),
                 student_train_ms=timed(student_train, device, reps))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step, total = timed(whole_step, device, reps), sum(parts.values())
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None
    return dict(device=torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} threads",
                batch=batch, latents=size, params_m=sum(p.numel() for p in student.parameters()) / 1e6, shape=shape,
                lora_rank=lora_rank, trained_m=sum(p.numel() for p in student.parameters() if p.requires_grad) / 1e6,
                checkpointing=checkpointing, dtype=str(dtype).removeprefix("torch."), **parts, sum_ms=total,
                step_ms=step, ratio=step / total, peak_gib=peak)


def table(r: dict) -> str:
    """The figures of run() as a markdown table."""
    peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a (CPU)"
    rows = [("teacher guided call (2B, both CFG branches)", f"{r['teacher_ms']:.1f}"),
            ("student call, no gradient", f"{r['student_call_ms']:.1f}"),
            ("student forward + backward + AdamW", f"{r['student_train_ms']:.1f}"),
            ("sum of the parts", f"{r['sum_ms']:.1f}"), ("whole BOOT step", f"{r['step_ms']:.1f}"),
            ("whole / sum", f"{r['ratio']:.3f}"), ("peak memory (whole step)", peak)]
    student = (f"LoRA rank {r['lora_rank']} ({r['trained_m']:.1f} M trained)" if r.get("lora_rank")
               else "full student")
    head = (f"{r['device']}; {r.get('shape', 'sd15')}-shaped UNet {r['params_m']:.1f} M parameters, {student}, "
            f"batch {r['batch']}, {r['latents']}x{r['latents']} "
            f"latents, {r['dtype']} autocast, gradient checkpointing {'on' if r['checkpointing'] else 'off'}\n\n")
    return head + "| part | ms |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)

