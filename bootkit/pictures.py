"""bootkit/pictures.py: the PNGs runs and the benchmark write, made to be looked at: small images enlarged
(nearest-neighbour, 4x or more for digits), at least MIN_WIDTH pixels wide, every row and column labelled."""
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_WIDTH = 400  # pixels: narrower pictures are enlarged until they reach it
CELL = 64  # pixels: the least size a small image is enlarged to (a 16x16 digit: 4x)
GAP, PAD = 2, 6  # pixels between images; around the labels
LABEL_WIDTH = 180  # pixels left of the images, for the row labels (cut to fit)
FONT_SIZE = 13


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)  # Pillow's own TrueType font: no system fonts needed
    except (TypeError, OSError):  # a Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


def _pixels(image) -> np.ndarray:
    """uint8 (H, W, 3) from an image in [-1, 1] (C, H, W) tensor, or a uint8 (H, W) / (H, W, 3) array."""
    if isinstance(image, torch.Tensor):
        x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        image = x.permute(1, 2, 0).numpy()
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _fit(text: str, font, width: int, draw) -> str:
    """text, cut with an ellipsis until it fits in width pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def layout(height: int, width: int, rows: int, cols: int, *, title: bool, col_labels: bool):
    """Where labelled_grid puts each image of height x width: (canvas size, box of each [row][col] as (x0, y0, x1, y1)).
    Enlarged by one integer factor, nearest-neighbour, to at least CELL pixels and the whole to MIN_WIDTH."""
    line = FONT_SIZE + 2 * PAD
    zoom = max(math.ceil(CELL / max(height, width)), math.ceil((MIN_WIDTH - LABEL_WIDTH) / (cols * (width + GAP))), 1)
    cw, ch = width * zoom, height * zoom
    top = line * (title + col_labels)
    boxes = [[(LABEL_WIDTH + c * (cw + GAP), top + r * (ch + GAP), LABEL_WIDTH + c * (cw + GAP) + cw,
               top + r * (ch + GAP) + ch) for c in range(cols)] for r in range(rows)]
    return (LABEL_WIDTH + cols * (cw + GAP), top + rows * (ch + GAP)), boxes


def labelled_grid(rows, *, row_labels, col_labels=None, title=None) -> Image.Image:
    """A picture of rows of images (each a (C, H, W) tensor in [-1, 1] or a uint8 array; None leaves a gray cell),
    placed by layout(), with row_labels on the left, col_labels above the columns and a title on top."""
    images = [[None if im is None else _pixels(im) for im in row] for row in rows]
    h, w = next(im for row in images for im in row if im is not None).shape[:2]
    size, boxes = layout(h, w, len(images), max(map(len, images)), title=bool(title), col_labels=bool(col_labels))
    canvas = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    if title:
        draw.text((PAD, PAD), _fit(title, font, size[0] - 2 * PAD, draw), fill="black", font=font)
    for (x0, y0, x1, _), label in zip(boxes[0], col_labels or []):
        draw.text((x0 + 2, y0 - FONT_SIZE - PAD), _fit(label, font, x1 - x0 - 4, draw), fill="black", font=font)
    for label, row, row_boxes in zip(row_labels, images, boxes):
        x0, y0, x1, y1 = row_boxes[0]
        draw.text((PAD, y0 + max(0, (y1 - y0 - FONT_SIZE) // 2)), _fit(label, font, LABEL_WIDTH - 2 * PAD, draw),
                  fill="black", font=font)
        for im, (x0, y0, x1, y1) in zip(row, row_boxes):
            cell = Image.new("RGB", (x1 - x0, y1 - y0), (128, 128, 128)) if im is None else \
                Image.fromarray(im).resize((x1 - x0, y1 - y0), Image.NEAREST)
            canvas.paste(cell, (x0, y0))
    return canvas


def save_labelled(path, rows, **labels):
    """labelled_grid(rows, **labels) written to path as a PNG."""
    labelled_grid(rows, **labels).save(path)


def plot_2d(path, arrays, student, fixed_point, grid):
    """Data, teacher and student side by side, and for a few noises the student's y_t on the grid beside its
    fixed point, the teacher's N-step sampler (the signals a perfect student returns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    lim = float(max(arrays["data"].abs().max(), 2.0)) * 1.1
    for ax, key, title in zip(axes, ("data", "teacher", "student"), ("data", "teacher (converged DDIM)", "student (one call)")):
        ax.scatter(*arrays[key][:, :2].T.numpy(), s=1, alpha=0.4)
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax = axes[3]
    ax.scatter(*arrays["data"][:2000].T.numpy(), s=1, alpha=0.08, c="gray")
    device = next(student.parameters()).device
    with torch.no_grad():
        for i, eps in enumerate(arrays["noise"][:12].to(device)):
            y = student(eps.expand(len(grid), 2), grid.to(device, torch.float32)).cpu()
            line, = ax.plot(*y.T.numpy(), lw=1, marker=".", ms=3)
            ax.plot(*fixed_point[:, i].T.numpy(), lw=1, ls="--", c=line.get_color())
            ax.scatter(*y[0].numpy(), s=14, c="k", zorder=3)
    ax.set(title="y_t on the grid: student -, fixed point --", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_error_map(path, error_map: dict, title: str):
    """evaluation.error_map drawn: against the grid index k, from T (k = N) on the left to the sample (k = 0) on the
    right as training's bootstrap chain runs, the student's RMSE to its fixed point at each t_k and the one-hop
    residual of each hop k -> k - 1 drawn at k; a log axis when the values span a decade (zeros left off it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t, fp, hop = error_map["t"], error_map["to_fixed_point"], error_map["one_hop"]
    n = len(t) - 1
    fig, ax = plt.subplots(figsize=(8, 4.6))
    positive = [v for v in fp + hop if v is not None and v > 0]
    log = bool(positive) and max(positive) >= 10 * min(positive)
    for values, style, label in ((fp, "o-", "student to its fixed point at t_k (0 at k = N: the exact y_T)"),
                                 (hop, "s--", "one-hop residual of hop k -> k-1 (training's, unweighted)")):
        ks = [k for k, v in enumerate(values) if v is not None and (v > 0 or not log)]
        ax.plot(ks, [values[k] for k in ks], style, ms=4, label=label)
    if log:
        ax.set_yscale("log")
    every = max(1, math.ceil((n + 1) / 17))
    ticks = list(range(0, n + 1, every))
    ax.set_xticks(ticks, [f"{k}\n{t[k]:.3g}" for k in ticks], fontsize=8)
    ax.set_xlim(n + 0.5, -0.5)  # T on the left, the sample on the right: the order the chain runs in
    unit = "per pixel" if error_map["rmse"] == "per-pixel" else "per sample (Euclidean)"
    ax.set(xlabel="grid index k, t_k beneath (k = N is T, pure noise; k = 0 is the sample)",
           ylabel=f"RMSE {unit}, signal space")
    ax.set_title(f"where the error enters: {title}, N = {n}, order {error_map['order']}, {error_map['noises']} noises", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_budget_curves(path, runs: list, *, metrics: list, levels: dict, calls: str, title: str):
    """A race at equal budgets: each metric (a row of panels) against seconds and teacher calls (the columns), a
    line per method in the order the runs came, both axes log (y linear where the metric says so), and the
    teacher's samplers as gray levels to reach. runs: dicts with "method", "seconds", "teacher_calls"; metrics:
    (y label, value of a run, log y) per row; levels: {label: a value per metric, None where it has none};
    calls: what a teacher call counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 4 * len(metrics)), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in runs))
    for i, (ylabel, value, log_y) in enumerate(metrics):
        for j, x in enumerate(("seconds", "teacher_calls")):
            ax = axes[i][j]
            for method in methods:
                rows = [row for row in runs if row["method"] == method]
                ax.plot([row[x] for row in rows], [value(row) for row in rows], "o-", label=method)
            for label, values in levels.items():
                if values[i] is not None:
                    ax.axhline(values[i], ls="--", lw=0.8, color="gray")
                    ax.text(0.01, values[i], label, transform=ax.get_yaxis_transform(), fontsize=8, color="gray",
                            va="bottom")
            ax.set_xscale("log")
            ax.set_yscale("log" if log_y else "linear")
            ax.set_xlabel("seconds on this machine" if x == "seconds" else f"teacher calls ({calls})")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def level_labels(levels: dict, *, near: float) -> list:
    """[(value, text)] for levels {label: value}, in order of value: levels closer than `near` to the one before
    share one text, which says what their labels share once ("teacher DDIM-50, 8"), where two would overprint."""
    placed = []
    for value, label in sorted((value, label) for label, value in levels.items()):
        if placed and value - placed[-1][0] < near:
            placed[-1][1].append(label)
        else:
            placed.append((value, [label]))
    out = []
    for value, (first, *others) in placed:
        shared = os.path.commonprefix([first, *others])
        shared = shared[:max(shared.rfind("-"), shared.rfind(" ")) + 1]  # whole words: DDIM-16 and DDIM-1 share "DDIM-"
        out.append((value, ", ".join([first, *(other[len(shared):] for other in others)])))
    return out


def plot_variants(path, runs: list, *, metrics: list, levels: dict, title: str):
    """A race at one budget: each metric (a panel) as a bar per method, in the order the runs came, the teacher's
    samplers as gray levels to reach. runs, metrics and levels as plot_budget_curves' (bars on a linear axis: their
    lengths compare)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 0.45 * len(runs) + 2), squeeze=False)
    names = [row["method"] for row in runs]
    for i, (label, value, _) in enumerate(metrics):
        ax = axes[0][i]
        ax.barh(range(len(runs)), [value(row) for row in runs], color="tab:blue")
        ax.set_yticks(range(len(runs)), names, fontsize=8)
        ax.invert_yaxis()  # the first run on top
        at = {name: values[i] for name, values in levels.items() if values[i] is not None}
        for level in at.values():
            ax.axvline(level, ls="--", lw=0.8, color="gray")
        for level, text in level_labels(at, near=0.03 * (ax.get_xlim()[1] - ax.get_xlim()[0])):
            ax.text(level, 1.0, text, transform=ax.get_xaxis_transform(), fontsize=8, color="gray",
                    ha="right", va="bottom", rotation=90)
        ax.set_xlabel(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def digit_columns(images, digits) -> list:
    """For each digit 0 ... 9, the first of images (B, ...) whose prompt names it (digits (B,)), None where none does."""
    firsts = [(digits == d).nonzero() for d in range(10)]
    return [images[f[0, 0]] if len(f) else None for f in firsts]


DIGIT_LABELS = [f"digit {d}" for d in range(10)]
