"""Everything needed to try iimm offline in minutes on a CPU: a tiny random CLIP and small image tasks.

`write_demo(folder)` writes `tiny-clip/` (an open_clip `local-dir:` model with seeded random weights),
four class-per-folder image tasks drawn with Pillow (`images/shapes`, `colours`, `stripes`, `digits`)
and `catalog.toml` naming them, for `iimm calibrate` and `iimm screen`. Random weights mean the
numbers mean nothing; the commands, files and records are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_CLIP_CONFIG = {  # a CLIP ViT: 32-pixel images, patch 8, width 64, 2 layers per tower (about 3.5 M parameters)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30)}
TASKS = {
    "shapes": ["circle", "square", "triangle", "cross"],
    "colours": list(COLOURS),
    "stripes": ["horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard"],
    "digits": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
}


def write_demo(folder, images_per_class: int = 24, seed: int = 0) -> dict[str, Path]:
    """Write the tiny model, the four tasks and the catalog under `folder`; return their paths by name."""
    root = Path(folder)
    paths = {"model": write_tiny_model(root / "tiny-clip", seed)}
    rng = np.random.default_rng(seed)
    for task, classes in TASKS.items():
        paths[task] = write_task(root / "images" / task, task, classes, images_per_class, rng)
    catalog = "".join(f'[[dataset]]\nname = "{task}"\npath = "images/{task}"\ntemplates = ["a photo of a {{}}."]\n\n'
                      for task in TASKS)
    (root / "catalog.toml").write_text(catalog, encoding="utf-8")
    paths["catalog"] = root / "catalog.toml"
    return paths


def write_tiny_model(folder, seed: int = 0) -> Path:
    """A tiny CLIP with seeded random weights as an open_clip folder (open_clip_config.json + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder


def write_task(folder, task: str, classes: list[str], per_class: int, rng: np.random.Generator) -> Path:
    """ROOT/<class with _ for spaces>/<k>.png, each image drawn with random placement and colours."""
    folder = Path(folder)
    for label, name in enumerate(classes):
        out = folder / name.replace(" ", "_")
        out.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            draw_image(task, label, name, rng).save(out / f"{k}.png")
    return folder


def draw_image(task: str, label: int, name: str, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    image = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(140, 256, 3))
    lo, hi = (int(v) for v in sorted(rng.integers(3, SIZE - 3, 2)))
    hi = max(hi, lo + 10)
    box = (lo, lo, min(hi, SIZE - 2), min(hi, SIZE - 2))
    if task == "shapes":
        if name == "circle":
            pen.ellipse(box, fill=colour)
        elif name == "square":
            pen.rectangle(box, fill=colour)
        elif name == "triangle":
            pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
        else:
            pen.line([box[:2], box[2:]], fill=colour, width=3)
            pen.line([(box[0], box[3]), (box[2], box[1])], fill=colour, width=3)
    elif task == "colours":
        base = np.array(COLOURS[name]) + rng.integers(-25, 26, 3)
        pen.rectangle(box, fill=tuple(int(v) for v in np.clip(base, 0, 255)))
    elif task == "stripes":
        step = int(rng.integers(3, 7))
        for i in range(-SIZE, 2 * SIZE, step * 2):
            if name == "horizontal stripes":
                pen.rectangle((0, i, SIZE, i + step - 1), fill=colour)
            elif name == "vertical stripes":
                pen.rectangle((i, 0, i + step - 1, SIZE), fill=colour)
            elif name == "diagonal stripes":
                pen.line([(i, 0), (i + SIZE, SIZE)], fill=colour, width=step // 2 + 1)
        if name == "checkerboard":
            for y in range(0, SIZE, step):
                for x in range((y // step) % 2 * step, SIZE, 2 * step):
                    pen.rectangle((x, y, x + step - 1, y + step - 1), fill=colour)
    else:  # digits: Pillow's built-in font, drawn small and scaled up twice
        glyph = Image.new("L", (8, 12), 0)
        ImageDraw.Draw(glyph).text((1, 0), str(label), fill=255)
        glyph = glyph.resize((16, 24))
        x, y = int(rng.integers(0, SIZE - 16)), int(rng.integers(0, SIZE - 24))
        image.paste(Image.new("RGB", glyph.size, colour), (x, y), glyph)
    return image
