"""bootkit/sd.py: a Stable-Diffusion-layout teacher and its student, as boot.py sees them (train_sd.py's pieces).

BOOT.md section 4. Conventions, stated here once:
- Time: boot.Schedule.discrete(alphas_cumprod), t = (i + 1) / n is the teacher's timestep i, t = 0 the
  clean latent. The student reads the timestep t n - 1 unrounded (-1 at t = 0; Schedule.network_time).
- Student output (boot.TeacherStudent): y = to_x0(unet(eps, t n - 1, c), x_t = eps) with the teacher's
  prediction type at the FIXED alpha_T, sigma_T of t = T, in float32. Starting as the teacher, g(eps, T, c) =
  f(eps, T, c).
- Guidance: diffusers' w (w = 1 is the conditional teacher). Every student has a guidance input (LCM's
  time_cond_proj_dim = 256, projection zero-initialised: it starts as the teacher for every w) that reads
  StableDiffusionPipeline's embedding of w - 1.
- Prompts are read from the file when a batch needs them and encoded per batch: memory does not grow with
  the file (a million prompts cost 16 MB of offsets).
- SDXL (a UNet with addition_embed_type "text_time", two text encoders): the conditioning is one tensor still,
  as boot.py's cond, which guidance batches and splits: the penultimate hidden states of both encoders
  concatenated (L tokens), then one more token holding the second encoder's pooled output and the six
  add_time_ids (size, crop (0, 0), target size of the trained resolution), zero-padded (PromptEncoder);
  unet_inputs unpacks it at every UNet call. Its null branch is StableDiffusionXLPipeline's: zeros for both
  when force_zeros_for_empty_prompt, else the empty prompt.
diffusers and transformers are imported where they are used: they take seconds, and bad input should not.
"""
import codecs
import contextlib
import json
import math
import sys
from array import array
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

import boot
from bootkit import runtime
from bootkit.runtime import UsageError

DEFAULT_TEACHER = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GUIDANCE_DIM = 256  # width of the student's guidance embedding, as in LCM
UNSUPPORTED_UNET = ("addition_embed_type", "class_embed_type")  # conditioning beyond text (SDXL's text_time is read)
XL = "text_time"  # SDXL's addition_embed_type: pooled text and time ids beside the text embeddings
XL_TIME_IDS = 6  # original size, crop top-left, target size (a refiner's aesthetic score makes 5: not read)
SD3 = "SD3Transformer2DModel"  # SD3's network, read at timestep n sigma_t (its flow scheduler's n: FLOW_TIMESTEPS)
FLOW_TIMESTEPS = 1000  # the num_train_timesteps of every flow-matching teacher read here (others refused)
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length: T5's tokens, or zeros without T5
PIPELINE = "pipeline"  # a run's diffusers pipeline folder (bootkit/card.py): its unet/ is the student
LORA = "lora"  # a --lora-rank run's LoRA folder (bootkit/card.py): pytorch_lora_weights.safetensors, its scheduler


# ----------------------------------------------------------------------------------------------------
# Input: prompts and the teacher.


class Prompts:
    """The prompts of a text file, read from it when needed: held as each one's byte offset and line number
    (16 bytes a prompt), not as text, so that a file of millions of prompts costs megabytes."""

    def __init__(self, path: Path, offsets: array, lines: array):
        self.path, self.offsets, self.lines = path, offsets, lines

    def __len__(self):
        return len(self.offsets)

    def read(self, indices) -> list:
        """The prompts at these indices, in that order."""
        with open(self.path, "rb") as f:
            texts = []
            for i in indices:
                f.seek(self.offsets[i])
                texts.append(f.readline().decode("utf-8").strip())
            return texts


def read_prompts(path, flag: str = "--prompts") -> Prompts:
    """One prompt a line, UTF-8 (a byte-order mark is fine); blank lines and # lines are skipped. The file is
    read once, here, to check it and to note where each prompt starts."""
    offsets, lines, position, blank = array("q"), array("q"), 0, True
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                skip = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
                try:
                    prompt = raw[skip:].decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    at, byte = position + skip + e.start, raw[skip + e.start]
                    raise UsageError(f"{flag} {path}: not UTF-8 text (byte {at} is {byte:#x})") from None
                if prompt and not prompt.startswith("#"):
                    offsets.append(position + skip)
                    lines.append(number)
                blank, position = blank and not prompt, position + len(raw)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise UsageError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None
    if not offsets:
        raise UsageError(f"{flag} {path}: " + ("the file is empty" if blank
                                               else "no prompt in it, only blank or # lines"))
    return Prompts(Path(path), offsets, lines)


def loaded(what: str, load):
    """load(), or one line saying what did not load and why (the hub out of reach, where that is why)."""
    import boot_diffusers
    try:
        with boot_diffusers.quiet_hub():
            return load()
    except Exception as e:  # whatever the reason (missing file, bad config, offline hub), the input is unusable
        offline = boot_diffusers.hub_unreachable(e)
        if offline:
            raise UsageError(f"{what} does not load: {offline}") from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{what} does not load ({reason})") from None


def check_unet_config(name: str) -> dict:
    """Refuse, from its config alone (before any weights load), a UNet that needs more than this script gives it:
    text embeddings, and SDXL's pooled text and time ids. Returns the config."""
    from diffusers import UNet2DConditionModel
    config = loaded(f"--teacher {name}: its unet", lambda: UNet2DConditionModel.load_config(name, subfolder="unet"))
    needs = [f"{key}={config[key]!r}" for key in UNSUPPORTED_UNET if config.get(key) and config[key] != XL]
    if needs:
        raise UsageError(f"--teacher {name}: its UNet needs more than text embeddings ({', '.join(needs)}); "
                         "train_sd.py supports teachers conditioned on text (SD 1.x, SD 2.x) and SDXL's layout")
    return config


def load_teacher(name: str, dtype, device, *, unet: bool = True):
    """The frozen parts of a diffusers Stable Diffusion (hub id or folder), the UNet only if asked for (its config
    checked first). The scheduler config is read first, with its own class (boot_diffusers.read_scheduler: the
    schedule, the prediction type, x0 clipping; other families refused): sd.teacher, and sd.scheduler. An SDXL
    layout (sd.xl) adds tokenizer_2 and text_encoder_2, sd.force_zeros (its pipeline's null branch), and a VAE in
    float32 where fp16 would overflow (force_upcast, as StableDiffusionXLPipeline decodes)."""
    import boot_diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    from transformers.utils import logging as transformers_logging
    try:
        read = boot_diffusers.read_scheduler(name, subfolder="scheduler", what=f"--teacher {name}")
    except boot_diffusers.UnsupportedTeacher as e:
        raise UsageError(str(e)) from None
    # No "Loading weights" bar per model (noise before a one-line error); the hub's download bars stay.
    # transformers 4.x has no such hook and shows no such bar.
    set_tqdm_hook = getattr(transformers_logging, "set_tqdm_hook", None)
    if set_tqdm_hook is not None:
        set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    index = pipeline_index(name)
    sd3 = "transformer" in index
    if sd3:
        return _load_sd3(name, index, read, dtype, device, transformer=unet)
    if read.family != "vp":
        raise UsageError(f"--teacher {name}: {type(read.scheduler).__name__} is a {boot_diffusers.FAMILY_WORDS[read.family]} "
                         "teacher with a UNet; train_sd.py reads flow matching in SD3's layout (a transformer) only "
                         "(train_toy.py --teacher distils unconditional ones)")
    unet_config = check_unet_config(name)  # its config only: cheap where the UNet is not loaded
    xl = unet_config.get("addition_embed_type") == XL
    classes = dict(tokenizer=CLIPTokenizer, text_encoder=CLIPTextModel, vae=AutoencoderKL)
    if xl:
        classes |= dict(tokenizer_2=CLIPTokenizer, text_encoder_2=CLIPTextModelWithProjection)
    if unet:
        classes["unet"] = UNet2DConditionModel
    sd = SimpleNamespace(teacher=read, scheduler=read.scheduler, xl=xl, sd3=False, force_zeros=False)
    for part, cls in classes.items():
        if part == "unet" and xl and xl_pooled_dim(unet_config) != sd.text_encoder_2.config.projection_dim:
            raise UsageError(f"--teacher {name}: its UNet reads {unet_config['projection_class_embeddings_input_dim']} "
                             f"added features, not {XL_TIME_IDS} time ids and the pooled text (an SDXL refiner's "
                             "aesthetic score?); train_sd.py reads SDXL base layouts")
        # Weights from safetensors only: a pickled .bin can run arbitrary code.
        kwargs = {} if part.startswith("tokenizer") else {"torch_dtype": dtype, "use_safetensors": True}
        value = loaded(f"--teacher {name}: its {part}", lambda: cls.from_pretrained(name, subfolder=part, **kwargs))
        if isinstance(value, torch.nn.Module):
            value = value.to(device).eval().requires_grad_(False)
        setattr(sd, part, value)
    for tok, encoder in [(sd.tokenizer, sd.text_encoder)] + ([(sd.tokenizer_2, sd.text_encoder_2)] if xl else []):
        # transformers builds an empty tokenizer, rather than failing, where the tokenizer's files are missing.
        if len(tok) <= len(tok.all_special_tokens) or tok.model_max_length > encoder.config.max_position_embeddings:
            raise UsageError(f"--teacher {name}: its tokenizer does not load (no vocabulary, or longer than the encoder)")
    if xl:
        sd.force_zeros = index.get("force_zeros_for_empty_prompt", True)  # StableDiffusionXLPipeline's default
        if dtype == torch.float16 and sd.vae.config.get("force_upcast"):  # SDXL's VAE overflows in fp16
            sd.vae = sd.vae.float()
    return sd


def pipeline_index(name: str) -> dict:
    """The teacher's model_index.json (which parts, of which classes; the pipeline's own settings), {} for a local
    folder without one (the SD 1.x/2.x parts load from their subfolders alone)."""
    from diffusers import DiffusionPipeline
    if Path(name).is_dir() and not (Path(name) / "model_index.json").exists():
        return {}
    return loaded(f"--teacher {name}: its model_index.json", lambda: DiffusionPipeline.load_config(name))


def _load_sd3(name: str, index: dict, read, dtype, device, *, transformer: bool):
    """StableDiffusion3Pipeline's parts (load_teacher's, SD3 layout): the flow-matching scheduler (read), two CLIP
    encoders with projections, T5 where the folder has one (text_encoder_3 may be None: its tokens are zeros then),
    the VAE, and the SD3Transformer2DModel as sd.unet (only if asked for). FLUX's and other transformers refused."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast
    kind = index["transformer"][1] if isinstance(index.get("transformer"), list) else None
    if kind != SD3:
        raise UsageError(f"--teacher {name}: its transformer is a {kind}; train_sd.py reads SD3's layout "
                         f"({SD3}) and UNets (FLUX's guidance-distilled transformer is not read yet)")
    if read.family != "flow" or read.scheduler.config.num_train_timesteps != FLOW_TIMESTEPS:
        raise UsageError(f"--teacher {name}: an SD3 transformer with a {type(read.scheduler).__name__} of "
                         f"{read.scheduler.config.num_train_timesteps} timesteps; train_sd.py reads SD3's flow matching "
                         f"(FlowMatchEulerDiscreteScheduler, {FLOW_TIMESTEPS} timesteps)")
    sd = SimpleNamespace(teacher=read, scheduler=read.scheduler, xl=False, sd3=True, force_zeros=False)
    config = loaded(f"--teacher {name}: its transformer", lambda: SD3Transformer2DModel.load_config(name, subfolder="transformer"))
    sd.joint_dim = config["joint_attention_dim"]  # T5's width, which the CLIP states are padded to
    t5 = bool((index.get("text_encoder_3") or [None])[0])
    classes = dict(tokenizer=CLIPTokenizer, text_encoder=CLIPTextModelWithProjection, tokenizer_2=CLIPTokenizer,
                   text_encoder_2=CLIPTextModelWithProjection, vae=AutoencoderKL)
    if t5:
        classes |= dict(tokenizer_3=T5TokenizerFast, text_encoder_3=T5EncoderModel)
    if transformer:
        classes["unet"] = SD3Transformer2DModel
    sd.tokenizer_3 = sd.text_encoder_3 = None
    for part, cls in classes.items():
        kwargs = {} if part.startswith("tokenizer") else {"torch_dtype": dtype, "use_safetensors": True}
        sub = "transformer" if part == "unet" else part
        value = loaded(f"--teacher {name}: its {sub}", lambda: cls.from_pretrained(name, subfolder=sub, **kwargs))
        if isinstance(value, torch.nn.Module):
            value = value.to(device).eval().requires_grad_(False)
        setattr(sd, part, value)
    return sd


def is_sd3(net) -> bool:
    """Whether a network (or its DDP wrapper) is SD3's transformer, called by keyword at n sigma_t."""
    return type(getattr(net, "module", net)).__name__ == SD3


def xl_pooled_dim(unet_config) -> int:
    """The pooled text width an SDXL UNet reads beside its XL_TIME_IDS time ids."""
    return unet_config["projection_class_embeddings_input_dim"] - XL_TIME_IDS * unet_config["addition_time_embed_dim"]


def vae_scale(vae) -> int:
    """Pixels per latent, as diffusers' pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, unet, resolution: int) -> tuple:
    """(channels, size, size) of the latents of a resolution x resolution image."""
    factor = vae_scale(vae)
    if is_sd3(unet):  # the transformer cuts the latents into patches
        multiple = factor * unet.config.patch_size
    else:  # the UNet halves the latents per level
        multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise UsageError(f"--resolution {resolution} must be a multiple of {multiple} for this teacher")
    return unet.config.in_channels, resolution // factor, resolution // factor


class PromptEncoder:
    """Prompts -> text conditioning (B, L, D) on the device, batch by batch, as StableDiffusionPipeline encodes them,
    or StableDiffusionXLPipeline (packed as the conventions above say; resolution: the images' side, for its time
    ids). Nothing is kept: memory does not grow with the prompts file. The first over-long prompt met is reported
    (once, when warn): the tokenizer truncates it."""

    def __init__(self, sd, device, *, warn: bool, resolution: int = None):
        self.sd, self.device, self.warn = sd, device, warn
        self.xl, self.sd3 = getattr(sd, "xl", False), getattr(sd, "sd3", False)
        if self.xl and resolution is None:
            raise ValueError("an SDXL teacher's conditioning holds the image size: pass resolution")
        self.time_ids = None if not self.xl else torch.tensor([resolution, resolution, 0, 0, resolution, resolution],
                                                              dtype=torch.float32)

    def _ids(self, tok, prompts: list) -> torch.Tensor:
        length = tok.model_max_length
        if self.warn:
            ids = tok(prompts, truncation=True, max_length=length + 1).input_ids  # one token more than fits: over-long
            over = [p for p, p_ids in zip(prompts, ids) if len(p_ids) > length]
            if over:
                tqdm.write(f"warning: prompts longer than the tokenizer's {length} tokens are truncated "
                           f"(reported once), first: {over[0][:60]!r}", file=sys.stderr)
                self.warn = False
        return tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def __call__(self, prompts: list) -> torch.Tensor:
        sd = self.sd
        if not (self.xl or self.sd3):
            return sd.text_encoder(self._ids(sd.tokenizer, prompts).to(self.device)).last_hidden_state
        hidden, pooled = [], []
        for tok, encoder in ((sd.tokenizer, sd.text_encoder), (sd.tokenizer_2, sd.text_encoder_2)):
            out = encoder(self._ids(tok, prompts).to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # the penultimate layer, as the pipelines read it (clip_skip None)
            pooled.append(out[0])  # SDXL: the second encoder's projection; SD3: both, concatenated
        if self.xl:
            return self._pack(torch.cat(hidden, dim=-1), pooled[1])
        clip = torch.nn.functional.pad(torch.cat(hidden, dim=-1), (0, sd.joint_dim - sum(h.shape[-1] for h in hidden)))
        if sd.text_encoder_3 is None:  # StableDiffusion3Pipeline without T5: zeros in its place
            t5 = clip.new_zeros(len(prompts), T5_TOKENS, sd.joint_dim)
        else:
            ids = sd.tokenizer_3(prompts, padding="max_length", max_length=T5_TOKENS, truncation=True,
                                 add_special_tokens=True, return_tensors="pt").input_ids
            t5 = sd.text_encoder_3(ids.to(self.device))[0].to(clip.dtype)
        return self._pack(torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1))

    def null(self) -> torch.Tensor:
        """The null branch of guidance, (1, L, D): the empty prompt, or zeros where an SDXL pipeline zeroes it."""
        if not (self.xl and self.sd.force_zeros):
            return self([""])
        like = self([""])  # shapes and dtype; its values are replaced
        pooled = like[:, -1, :self.sd.text_encoder_2.config.projection_dim]
        return self._pack(torch.zeros_like(like[:, :-1]), torch.zeros_like(pooled))

    def _pack(self, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """hidden, then one more token: the pooled text and (SDXL) the time ids, zero-padded."""
        extra = torch.zeros(len(hidden), 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        n, ids = pooled.shape[-1], 0 if self.time_ids is None else len(self.time_ids)
        if n + ids > hidden.shape[-1]:
            raise ValueError(f"pooled text ({n}) and time ids ({ids}) do not fit one token of {hidden.shape[-1]}")
        extra[:, 0, :n] = pooled
        if ids:
            extra[:, 0, n:n + ids] = self.time_ids.to(hidden.device, hidden.dtype)
        return torch.cat([hidden, extra], dim=1)


def unet_inputs(unet, cond: torch.Tensor) -> dict:
    """The network's conditioning keywords from a PromptEncoder's cond, in its dtype: encoder_hidden_states, and
    unpacked from its last token SDXL's added_cond_kwargs (text_embeds, time_ids) or SD3's pooled_projections."""
    cond = cond.to(unet.dtype)
    if is_sd3(unet):
        return {"encoder_hidden_states": cond[:, :-1], "pooled_projections": cond[:, -1, :unet.config.pooled_projection_dim]}
    if unet.config.get("addition_embed_type") != XL:
        return {"encoder_hidden_states": cond}
    n = xl_pooled_dim(unet.config)
    extra = cond[:, -1]
    return {"encoder_hidden_states": cond[:, :-1],
            "added_cond_kwargs": {"text_embeds": extra[:, :n], "time_ids": extra[:, n:n + XL_TIME_IDS]}}


# ----------------------------------------------------------------------------------------------------
# Teacher and student as boot.py sees them.


def teacher_fn(unet, schedule: boot.Schedule, prediction: str, *, lora_base: bool = False) -> boot.Teacher:
    """f(x_t, t, c) -> x0: the teacher UNet in its own dtype; the result is in x_t's dtype (float32 in
    training), so the bootstrap target is computed in fp32. lora_base: unet is a LoRA student, its base the teacher."""
    def unet_call(x, timestep, cond):
        with adapters_off(unet) if lora_base else contextlib.nullcontext():
            return network_call(unet, x, timestep, cond, schedule=schedule)
    return boot.denoiser(unet_call, schedule, prediction=prediction)


def network_call(model, x, time, cond, *, schedule: boot.Schedule, w_emb=None) -> torch.Tensor:
    """The raw prediction of a UNet, SD3's transformer or a DDP wrapper of one, x in its dtype, at boot's time input:
    a UNet's timestep (Schedule.network_time or teacher_time), or for SD3 boot's t, read at FLOW_TIMESTEPS sigma_t
    (FlowMatchEulerDiscreteScheduler's timestep) and called by keyword (its forward's order differs)."""
    net = getattr(model, "module", model)
    if is_sd3(net):
        timestep = FLOW_TIMESTEPS * schedule.coefficients(time.double())[1].float()
        return model(hidden_states=x.to(net.dtype), timestep=timestep.expand(len(x)), **unet_inputs(net, cond)).sample
    return model(x.to(net.dtype), time, **unet_inputs(net, cond), timestep_cond=w_emb).sample


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """What StableDiffusionPipeline feeds a UNet with a guidance input: LCM's sinusoidal embedding of 1000 (w - 1),
    computed as its get_guidance_scale_embedding computes it (float32, on the CPU, the same operations), so the
    student trains on the very input the pipeline gives it. Written out: importing the pipeline would pull in
    transformers' image processors."""
    half = dim // 2
    scaled = (w - 1).float().cpu() * 1000.0
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = scaled[:, None] * freqs[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).to(w.device)  # dim is even (GUIDANCE_DIM)


def unet_fn(model, schedule: boot.Schedule, w=None):
    """net(x, time, cond) -> the network's raw prediction (network_call), fed the embedding of w (B,) where it has a
    guidance input (time_cond_proj_dim). model: the UNet (SD3's transformer) or its DistributedDataParallel wrapper."""
    unet = getattr(model, "module", model)
    dim = unet.config.get("time_cond_proj_dim")
    w_emb = guidance_embedding(w, dim).to(unet.dtype) if dim and w is not None else None
    return lambda x, time, cond: network_call(model, x, time, cond, schedule=schedule, w_emb=w_emb)


def student_fn(model, schedule: boot.Schedule, prediction: str, w=None) -> boot.TeacherStudent:
    """g(eps, t, c): boot.TeacherStudent over the student UNet, to_x0(unet(eps, t n - 1, c, emb(w - 1)), x_t = eps)
    at the fixed alpha_T, sigma_T. model: the UNet or its DistributedDataParallel wrapper; w (B,) is fed when
    the UNet has a guidance input (time_cond_proj_dim)."""
    net = unet_fn(model, schedule, w)
    # float32 out: the signal, and the bootstrap target made from it, are fp32
    return boot.TeacherStudent(lambda x, time, cond: net(x, time, cond).float(), schedule, prediction=prediction)


def make_student(teacher: str, *, sd3: bool = False):
    """The teacher's UNet in float32 (the master weights), in train mode, plus a zero-initialised guidance input:
    with it StableDiffusionPipeline feeds the student w and runs no guidance of its own, whether the student
    learns one w or a range. SD3's transformer is copied as it is: StableDiffusion3Pipeline feeds no guidance input,
    so its student bakes one w in."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    if sd3:
        return SD3Transformer2DModel.from_pretrained(teacher, subfolder="transformer", torch_dtype=torch.float32,
                                                     use_safetensors=True).train()
    unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet", torch_dtype=torch.float32,
                                                use_safetensors=True)
    if unet.config.time_cond_proj_dim:  # a teacher with a guidance input keeps its own
        return unet.train()
    student = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": GUIDANCE_DIM})
    for name in student.load_state_dict(unet.state_dict(), strict=False).missing_keys:  # time_embedding.cond_proj
        torch.nn.init.zeros_(student.get_parameter(name))
    return student.train()


# LCM-LoRA's targets (attention, feed-forward, resnet convolutions, time projections), and the time embedding's first
# layer, whose LoRA bias carries the exported student's time shift (card.save_lora).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj", "time_embedding.linear_1"]


def add_lora(unet, rank: int):
    """The LoRA student, in place: rank-`rank` adapters (peft, scale 1: lora_alpha = rank) on LORA_TARGETS, in float32,
    B zero-initialised so that it starts as the teacher; the base frozen. No guidance input: a LoRA bakes one w."""
    from peft import LoraConfig
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return unet.train()


@contextlib.contextmanager
def adapters_off(unet):
    """The base network inside the block: a LoRA student's teacher, one copy of the weights for both."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


@contextlib.contextmanager
def evaluating(module):
    """module in eval mode inside the block, then back in the mode it was in (the live student goes on training)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def resolved_dtype(name: str, device) -> str:
    """--dtype's name, auto resolved: bf16 on CUDA, fp32 elsewhere."""
    return name if name != "auto" else "bf16" if device.type == "cuda" else "fp32"


def autocast(device, dtype):
    """Mixed precision in dtype over float32 weights; none for fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def boot_sd_loss(model, teacher, *, eps, cond, w, k, schedule, grid, prediction, null_cond, dtype, finish=None,
                 target=None, order=1):
    """One BOOT loss under autocast: each example's w guides its teacher target and enters the student.
    finish: the teacher's x0 clipping, applied to the guided x0 as diffusers does (TeacherSchedule.finish).
    target: the UNet that makes the bootstrap targets (the EMA: a target network), else the student itself;
    order 2: Heun's teacher step (two guided teacher calls)."""
    with autocast(eps.device, dtype):
        student, guided = student_fn(model, schedule, prediction, w), boot.guided(teacher, scale=w, null_cond=null_cond)
        guided = guided if finish is None else finish(guided)
        target_student = None if target is None else student_fn(target, schedule, prediction, w)
        return boot.boot_loss(student, guided, eps, schedule=schedule, grid=grid, cond=cond, k=k,
                              config=boot.BootConfig(order=order), target_student=target_student)


def add_corrector_flags(p):
    """The corrector's flags, train_sd.py's and those of the text-to-image race's KD + corrector (check them with
    check_corrector_flags)."""
    positive = runtime.positive
    p.add_argument("--corrector-weight", type=float, default=0.0,
                   help="weight of the data-free distribution corrector (boot.corrector_loss, DMD's score difference on "
                        "the student's one-call samples; the real score the guided teacher at each sample's w, the fake a "
                        "copy of the teacher trained online on those samples) added to BOOT's loss; 0 = BOOT alone")
    p.add_argument("--corrector-batch", type=positive(), help="one-call samples per step for the corrector (default "
                                                               "--batch-size)")
    p.add_argument("--corrector-start", type=int, default=0, help="the step the corrector starts at (BOOT alone before)")
    p.add_argument("--fake-lr", type=positive(float), help="AdamW learning rate of the fake network (default: the "
                                                          "student's)")
    p.add_argument("--fake-updates", type=positive(), default=1, help="fake-network steps per student step")


def corrector_defaults(args, *, batch: int, lr: float):
    """The corrector's flags left unset take the student's: its batch and its learning rate."""
    args.corrector_batch, args.fake_lr = args.corrector_batch or batch, args.fake_lr or lr


def check_corrector_flags(args):
    if not (args.corrector_weight >= 0 and math.isfinite(args.corrector_weight)):
        raise UsageError(f"--corrector-weight {args.corrector_weight}: must be 0 or more")
    if args.corrector_start < 0:
        raise UsageError(f"--corrector-start {args.corrector_start}: must be 0 or more")


class Corrector:
    """train_sd's data-free distribution corrector (BOOT.md section 10), as train_toy's: a fake copy of the teacher's
    UNet with the student's guidance input (make_student: it starts as the unguided teacher, as DMD's fake score
    starts), trained on the student's one-call samples with their prompts and w; the real denoiser is the guided
    teacher at each sample's w. Both finished as the teacher (its x0 clipping), so that equal networks give 0. Every
    step draws its noise, prompts, w and times from the step's generator: resume is exact."""
    T_RANGE = (0.02, 0.98)

    def __init__(self, args, teacher_name: str, d, *, teacher, parts, encode, null, prompts, shape, w_range):
        self.net = make_student(teacher_name, sd3=parts.sd3).to(d.device)
        self.trained = torch.nn.parallel.DistributedDataParallel(self.net) if d.world > 1 else self.net
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=args.fake_lr)
        self.args, self.d, self.teacher, self.read, self.encode, self.null = args, d, teacher, parts.teacher, encode, null
        self.prompts, self.shape, self.w_range = prompts, shape, w_range

    def denoiser(self, w):
        """The fake network's x0 at w, finished as the teacher's."""
        read = self.read
        return read.finish(boot.denoiser(unet_fn(self.net, read.schedule, w), read.schedule, prediction=read.prediction))

    def loss(self, model, step: int, gen, dtype):
        """(weighted corrector loss, logs) of this step, after the fake network's updates; None before the start."""
        a, device, schedule, prediction = self.args, self.d.device, self.read.schedule, self.read.prediction
        if step < a.corrector_start:
            return None
        b, (lo, hi) = a.corrector_batch, self.w_range
        eps = torch.randn(b, *self.shape, generator=gen, device=device)
        which = torch.randint(len(self.prompts), (b,), generator=gen, device=device)
        w = lo + (hi - lo) * torch.rand(b, generator=gen, device=device)
        cond = self.encode(self.prompts.read(which.tolist()))
        t = boot.random_times(schedule, b, lo=self.T_RANGE[0], hi=self.T_RANGE[1], generator=gen, device=device)
        noise = torch.randn(eps.shape, generator=gen, device=device)
        with autocast(device, dtype):
            x = student_fn(model, schedule, prediction, w)(eps, eps.new_zeros(b), cond)  # one call, with gradient
            real = self.read.finish(boot.guided(self.teacher, scale=w, null_cond=self.null))
            loss, logs = boot.corrector_loss(x, real, self.denoiser(w), noise, schedule=schedule, t=t, cond=cond)
            fake_losses = []
            for _ in range(a.fake_updates):  # after the term: this step's corrector reads the fake as it was
                t = boot.random_times(schedule, b, generator=gen, device=device)
                noise = torch.randn(eps.shape, generator=gen, device=device)
                fake = boot.fake_loss(unet_fn(self.trained, schedule, w), x, noise, schedule=schedule,
                                      prediction=prediction, t=t, cond=cond)
                fake_losses.append(runtime.extra_step(self.optimizer, fake, self.net, self.d))
        return a.corrector_weight * loss, logs | {"fake_loss": torch.stack(fake_losses).mean()}


def latent_shift(vae) -> float:
    """The VAE's shift_factor (SD3's: latents are (z - shift) scale), 0 where it has none."""
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def decode(vae, latents) -> np.ndarray:
    """uint8 images (B, H, W, 3) from latents, with the teacher's AutoencoderKL or an AutoencoderTiny."""
    x = vae.decode((latents / vae.config.scaling_factor + latent_shift(vae)).to(vae.dtype)).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def read_run(run: Path, flag: str) -> dict:
    """The boot_sd.json of a finished run, or one line saying it is none."""
    try:
        return json.loads((run / "boot_sd.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{flag} {run}: no readable boot_sd.json; "
                         "expected the --out folder of a finished train_sd.py run") from None


def load_student(run: Path, flag: str, device):
    """The run's student UNet (RUN/pipeline/unet) in float32 (--dtype is the autocast it runs under), in eval mode,
    reading its t = 0 at boot's timestep again (the folder's is the stock scheduler's: boot_diffusers.retime)."""
    import boot_diffusers
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    sd3 = (run / PIPELINE / "transformer").is_dir()
    load, part = (SD3Transformer2DModel, "transformer") if sd3 else (UNet2DConditionModel, "unet")
    unet = loaded(f"{flag} {run}: its student", lambda: load.from_pretrained(run / PIPELINE / part, torch_dtype=torch.float32,
                                                                             use_safetensors=True))
    config = loaded(f"{flag} {run}: its scheduler", lambda: json.loads(
        (run / PIPELINE / "scheduler" / "scheduler_config.json").read_text()))
    facts = boot_diffusers.student_facts(config)
    if facts.get("unet_timestep", -1) != facts.get("trained_timestep", -1):
        boot_diffusers.retime(unet, old=facts["unet_timestep"], new=facts["trained_timestep"])
    return unet.to(device).eval()


def noise(generator: torch.Generator, n: int, shape: tuple, device) -> torch.Tensor:
    """n standard normal latents of shape, drawn on the CPU from generator, then moved to device: the same noise on
    every device, as diffusers draws a pipeline's latents from a CPU generator (the model card's snippet)."""
    return torch.randn(n, *shape, generator=generator).to(device)

