"""Scenes of the miniature world: 1-3 coloured shapes on a dark square, as a scene graph and a PNG.

A scene graph is plain JSON-able data, so it travels inside tasks and training records and can be
re-rendered in any language. Within a scene every shape and every colour occurs at most once, so
"the circle" and "the red shape" always name exactly one object.

>>> import random
>>> scene = sample_scene(random.Random(0), "s-0", size=32)
>>> sorted(scene["objects"][0])
['color', 'pos', 'r', 'shape', 'x', 'y']
>>> render_png(scene)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True

Images are drawn by stamping cached per-(shape, radius) masks into a numpy array: no
anti-aliasing, so every object pixel has exactly its colour (tests read the colour back), and
tens of thousands of images take about a second.
"""
from __future__ import annotations

import io
import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# RGB of each colour word. Hues far apart so a tiny vision tower can tell them apart; the
# background is dark grey, not a colour word, and never equal to one.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
POSITIONS: tuple[str, ...] = ("left", "middle", "right")   # thirds of the image, by x
BACKGROUND = (45, 45, 45)
MAX_OBJECTS = 3


def _band(column: int, size: int, r: int) -> tuple[int, int]:
    """Integer x range of centres in image third `column`, kept 1 px inside the third so the
    position word is never ambiguous, and `r` px inside the image."""
    lo = math.ceil(column * size / 3) + 1
    hi = math.floor((column + 1) * size / 3) - 2
    return max(lo, r), min(hi, size - 1 - r)


def sample_scene(rng: random.Random, scene_id: str, size: int = 32,
                 max_objects: int = MAX_OBJECTS) -> dict:
    """A random scene graph: 1..max_objects objects with distinct shapes and distinct colours,
    bounding boxes at least 2 px apart, each centre inside one third of the image (`pos`).
    Objects are listed left to right, so descriptions read like the picture."""
    if not 1 <= max_objects <= len(SHAPES):
        raise ValueError(f"max_objects must be 1..{len(SHAPES)}, got {max_objects}")
    if size < 16:
        raise ValueError(f"image size must be at least 16 px, got {size}")
    n = rng.randint(1, max_objects)
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    r_lo, r_hi = round(0.15 * size), round(0.2 * size)
    while True:   # rejection sampling; a layout that does not fit is redrawn from scratch
        objects = []
        for shape, color in zip(shapes, colors):
            r = rng.randint(r_lo, r_hi)
            column = rng.randrange(3)
            x_lo, x_hi = _band(column, size, r)
            if x_lo > x_hi:
                break
            x, y = rng.randint(x_lo, x_hi), rng.randint(r, size - 1 - r)
            if any(abs(x - o["x"]) <= r + o["r"] + 1 and abs(y - o["y"]) <= r + o["r"] + 1
                   for o in objects):
                break
            objects.append(dict(shape=shape, color=color, x=x, y=y, r=r, pos=POSITIONS[column]))
        else:
            objects.sort(key=lambda o: (o["x"], o["y"]))
            return {"id": scene_id, "size": size, "objects": objects}


@lru_cache(maxsize=None)
def _mask(shape: str, r: int) -> np.ndarray:
    """Boolean (2r+1, 2r+1) stamp of `shape` with its centre at [r, r]; the centre is always set."""
    side = 2 * r + 1
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([0, 0, 2 * r, 2 * r], fill=1)
    elif shape == "square":
        h = round(0.8 * r)   # a full-box square would look bigger than the circle
        draw.rectangle([r - h, r - h, r + h, r + h], fill=1)
    elif shape == "triangle":
        draw.polygon([(r, 0), (0, 2 * r), (2 * r, 2 * r)], fill=1)
    elif shape == "star":
        points = []
        for k in range(10):   # five outer tips alternating with five inner corners
            radius = r if k % 2 == 0 else 0.5 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((r + radius * math.cos(angle), r + radius * math.sin(angle)))
        draw.polygon(points, fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(img, dtype=bool)


def render_array(scene: dict) -> np.ndarray:
    """The scene as a uint8 array, shape (size, size, 3)."""
    size = scene["size"]
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = BACKGROUND
    for o in scene["objects"]:
        x, y, r = o["x"], o["y"], o["r"]
        arr[y - r:y + r + 1, x - r:x + r + 1][_mask(o["shape"], r)] = COLORS[o["color"]]
    return arr


def _key(scene: dict) -> tuple:
    return (scene["size"],) + tuple((o["shape"], o["color"], o["x"], o["y"], o["r"])
                                    for o in scene["objects"])


@lru_cache(maxsize=65536)
def _png(key: tuple) -> bytes:
    scene = {"size": key[0], "objects": [dict(zip(("shape", "color", "x", "y", "r"), o))
                                         for o in key[1:]]}
    buf = io.BytesIO()
    # compress_level 1: images are tiny, and PIL writes no timestamp, so bytes are reproducible
    Image.fromarray(render_array(scene)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_png(scene: dict) -> bytes:
    """PNG bytes of the scene (cached per layout: parallel tasks share one image)."""
    return _png(_key(scene))
