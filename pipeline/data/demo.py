"""The embedded demo dataset: rendered scenes of shapes with known factors of variation.

Every image is a function of ``(seed, split, index)`` alone (its own ``numpy`` generator), so images
can be rendered in any order, in parallel, and are identical on every machine.

Scene. The class is the shape kind (``CLASSES``: circle, square, triangle, ... up to 20). An image
holds 1 to 4 objects of its class, all in one colour and one size category (small / medium / large,
radius jittered within the category), at random positions and rotations, on a plain or gradient
background of two muted colours. Scenes are drawn at ``SUPERSAMPLE`` times the output size and reduced
with a BOX filter, which anti-aliases the edges.

The world is made for models of ~1M parameters trained for minutes on 2 CPU cores: the shapes are
large (a small one spans a quarter of the image, 4 x 4 cells of the 16 x 16 VQGAN grid), and the
in-distribution backgrounds have no high-frequency texture (stripes, dots and checks dominated the
pixel error of every 32-token reconstruction and no demo model could reproduce them). Complexity comes
from the content: how many objects, how large, how long their outlines.

Factors recorded per image (all sampled independently of each other and of the class):

- ``shape`` / ``label``: the class;
- ``color`` / ``color_index``: the objects' colour, the image's dominant colour (index into ``COLORS``);
- ``object_count`` (1-4), ``size_name`` and ``object_size`` (mean object radius / image side);
- ``texture``, ``texture_frequency`` (cycles or cells per image side; 0 for plain, 0.5 for a gradient),
  ``palette`` and ``style`` (``"<palette>/<texture>"``);
- ``brightness``: a global gain in ``BRIGHTNESS_RANGE`` applied to the finished image (values clip at
  255), uniform;
- ``blur``: the sigma, in output pixels, of a Gaussian blur of the whole image, uniform in
  ``[0, BLUR_MAX_AT_64 * size / 64]`` (blur is applied before brightness);
- ``complexity``: the edge density of the sharp scene, i.e. the fraction of output pixels whose
  luminance gradient (forward differences, luminance in [0, 1]) has magnitude above
  ``EDGE_THRESHOLD``, measured before blur and brightness so that it describes the content only.
  It grows with object count, object size and outline length (and texture frequency, in ood).

Captions name count, size, colour, shape and background, and qualify the photo as "dark" / "bright"
(brightness below 0.7 / above 1.3) and "blurry" (blur above half the range), e.g.
"a dark blurry photo of three large blue stars on a dotted background". :func:`caption_variants` adds the
shorter captions CLIP is trained with (count and shape, colour, the shape alone, the photo's quality).

Splits: ``train`` and ``val`` use the standard palette (``COLORS[:8]`` objects on muted backgrounds)
and the backgrounds ``TEXTURES_IN`` (plain, gradient); ``ood`` uses colours, background colours and
textures (``TEXTURES_OOD``) that never occur in train or val, for ALIT's familiarity analysis. Within a split
image ``i`` has class ``i % num_classes``, so every prefix is class-balanced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from pipeline.data.transforms import Prepared, encode

# The first ten (the demo's classes) are chosen to stay distinct at 64 px under blur and rotation:
# hexagons, octagons and pentagons blur into circles, and came only after them.
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "arrow", "crescent", "diamond",
           "ellipse", "hexagon", "pentagon", "octagon", "semicircle", "trapezoid", "frame", "chevron",
           "parallelogram", "teardrop")
PLURALS = {"cross": "crosses"}

# (name, RGB); the first 8 are the standard palette, the rest appear only in the ood split.
COLORS = (("red", (220, 40, 40)), ("green", (40, 170, 60)), ("blue", (40, 80, 220)),
          ("yellow", (235, 210, 40)), ("orange", (240, 130, 30)), ("purple", (140, 60, 190)),
          ("cyan", (40, 200, 210)), ("white", (245, 245, 245)),
          ("pink", (250, 130, 190)), ("brown", (130, 80, 40)), ("lime", (170, 240, 60)),
          ("teal", (0, 128, 128)), ("black", (20, 20, 20)), ("olive", (128, 128, 0)))
N_STANDARD_COLORS = 8
BACKGROUNDS = {
    "standard": ((200, 190, 170), (150, 150, 150), (110, 130, 150), (160, 180, 140), (90, 90, 100),
                 (190, 160, 140)),
    "ood": ((120, 50, 140), (40, 110, 70), (160, 70, 40), (50, 80, 150), (210, 200, 90)),
}
TEXTURES_IN = ("plain", "gradient")
TEXTURES_OOD = ("stripes", "checker", "waves")
TEXTURE_WORDS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "grid": "grid",
                 "gradient": "gradient", "checker": "checkered", "noise": "noisy", "waves": "wavy",
                 "zigzag": "zigzag"}
SIZES = (("small", 0.12, 0.15), ("medium", 0.16, 0.20), ("large", 0.21, 0.26))  # radius / side
NUMBER_WORDS = ("a", "two", "three", "four")
BRIGHTNESS_RANGE = (0.4, 1.6)
BLUR_MAX_AT_64 = 1.5
EDGE_THRESHOLD = 0.08
SPLIT_CODES = {"train": 0, "val": 1, "ood": 2}
SCHEMA = pa.schema([
    ("image", pa.binary()), ("label", pa.int64()), ("key", pa.string()), ("caption", pa.string()),
    ("shape", pa.string()), ("color", pa.string()), ("color_index", pa.int64()),
    ("object_count", pa.int64()), ("size_name", pa.string()), ("object_size", pa.float64()),
    ("texture", pa.string()), ("texture_frequency", pa.float64()), ("palette", pa.string()),
    ("style", pa.string()), ("brightness", pa.float64()), ("blur", pa.float64()),
    ("complexity", pa.float64()),
])


def supersample(size: int) -> int:
    """Render scale factor: 4x up to 128 px outputs, 2x above (the cost grows with the area)."""
    return 4 if size <= 128 else 2


def class_names(num_classes: int) -> list[str]:
    """The first ``num_classes`` shape names, in label order."""
    return list(CLASSES[:num_classes])


def class_wnid(label: int) -> str:
    """Synthetic WordNet-style id of a demo class (``demo0003``), for a manifest shaped like ImageNet's."""
    return f"demo{label:04d}"


# ----------------------------------------------------------------------------- shapes
def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.sin(t), -np.cos(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.sin(t), -r * np.cos(t)], 1)


def _curve(fx, fy, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([fx(t), fy(t)], 1)
    return pts / np.abs(pts).max()


def _outline(name: str) -> list[tuple[np.ndarray, int]]:
    """Polygons in the unit square, each with 255 (add) or 0 (cut out), for shape ``name``."""
    circle = _regular(64)
    square = np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if name == "circle":
        return [(circle, 255)]
    if name == "square":
        return [(square, 255)]
    if name == "triangle":
        return [(_regular(3) + [0, 0.2], 255)]
    if name == "star":
        return [(_star(), 255)]
    if name == "cross":
        a, b = 0.3, 0.95
        return [(np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a],
                           [-b, a], [-b, -a], [-a, -a]]), 255)]
    if name == "ring":
        return [(circle, 255), (circle * 0.55, 0)]
    if name == "hexagon":
        return [(_regular(6), 255)]
    if name == "diamond":
        return [(np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]), 255)]
    if name == "ellipse":
        return [(circle * [1.0, 0.55], 255)]
    if name == "crescent":
        return [(circle, 255), (circle * 0.85 + [0.45, -0.15], 0)]
    if name == "pentagon":
        return [(_regular(5), 255)]
    if name == "heart":
        return [(_curve(lambda t: 16 * np.sin(t) ** 3,
                        lambda t: -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))),
                 255)]
    if name == "arrow":
        return [(np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25],
                           [-1, 0.25]]), 255)]
    if name == "octagon":
        return [(_regular(8, np.pi / 8), 255)]
    if name == "semicircle":
        t = np.linspace(0, np.pi, 33)
        return [(np.stack([np.cos(t), -np.sin(t) + 0.4], 1), 255)]
    if name == "trapezoid":
        return [(np.array([[-0.45, -0.6], [0.45, -0.6], [1, 0.6], [-1, 0.6]]), 255)]
    if name == "frame":
        return [(square, 255), (square * 0.6, 0)]
    if name == "chevron":
        return [(np.array([[-0.9, -0.8], [-0.3, -0.8], [0.5, 0], [-0.3, 0.8], [-0.9, 0.8], [-0.1, 0]]), 255)]
    if name == "parallelogram":
        return [(np.array([[-0.4, -0.55], [1, -0.55], [0.4, 0.55], [-1, 0.55]]), 255)]
    if name == "teardrop":
        return [(_curve(lambda t: np.sin(t) * (1 - np.cos(t)) * 0.8, lambda t: np.cos(t)), 255)]
    raise ValueError(f"unknown shape {name!r}")


OUTLINES = {name: _outline(name) for name in CLASSES}
# Squares and diamonds turn by at most 30 degrees so that a caption's "square" still looks like one.
MAX_ROTATION = {name: (np.pi / 6 if name in ("square", "diamond") else np.pi) for name in CLASSES}


# ----------------------------------------------------------------------------- backgrounds
@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side  # coordinates in [0, 1)
    return yy, xx


def _texture(kind: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A (side, side) weight map in [0, 1] mixing background colour 1 (0) and 2 (1), and its frequency."""
    yy, xx = _grid(side)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "plain":
        return np.zeros((side, side)), 0.0
    if kind == "gradient":
        return (u - u.min()) / (u.max() - u.min()), 0.5
    if kind == "stripes":
        f = rng.uniform(3, 10)
        return ((u * f) % 1.0 < 0.5).astype(float), f
    if kind == "dots":
        f = rng.uniform(4, 9)
        dx, dy = (xx * f) % 1.0 - 0.5, (yy * f) % 1.0 - 0.5
        return (dx**2 + dy**2 < 0.3**2).astype(float), f
    if kind == "grid":
        f = rng.uniform(3, 8)
        return (np.minimum((xx * f) % 1.0, (yy * f) % 1.0) < 0.15).astype(float), f
    if kind == "checker":
        f = rng.uniform(2, 6)
        return ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(float), f
    if kind == "noise":
        f = float(rng.integers(8, 17))
        cells = rng.random((int(f), int(f)))
        img = Image.fromarray((cells * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
        return np.asarray(img) / 255.0, f
    if kind == "waves":
        f = rng.uniform(3, 8)
        cx, cy = rng.uniform(0, 1, 2)
        r = np.hypot(xx - cx, yy - cy)
        return 0.5 + 0.5 * np.sin(2 * np.pi * f * r), f
    if kind == "zigzag":
        f = rng.uniform(3, 8)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        wobble = 0.08 * np.abs((v * 2 * f) % 2.0 - 1.0)
        return (((u + wobble) * f) % 1.0 < 0.5).astype(float), f
    raise ValueError(f"unknown texture {kind!r}")


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class DemoSpec:
    """What is needed to render image ``index`` of ``split``."""

    seed: int
    split: str
    index: int
    num_classes: int
    size: int


def render(spec: DemoSpec) -> tuple[np.ndarray, dict]:
    """Render one demo image: (size, size, 3) uint8 and its factors (see the module docstring)."""
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[spec.split], spec.index])
    size, ss = spec.size, supersample(spec.size)
    side = size * ss
    label = spec.index % spec.num_classes
    shape = CLASSES[label]
    ood = spec.split == "ood"

    # Nuisance factors first, each from its own draw, so they never depend on the scene content.
    brightness = float(rng.uniform(*BRIGHTNESS_RANGE))
    blur = float(rng.uniform(0, BLUR_MAX_AT_64 * size / 64))

    palette = "ood" if ood else "standard"
    texture = str(rng.choice(TEXTURES_OOD if ood else TEXTURES_IN))
    bg_colors = BACKGROUNDS[palette]
    i1, i2 = rng.choice(len(bg_colors), 2, replace=False)
    weights, frequency = _texture(texture, side, rng)
    mix = Image.fromarray(np.rint(weights * 255).astype(np.uint8))
    canvas = Image.composite(Image.new("RGB", (side, side), bg_colors[i2]),
                             Image.new("RGB", (side, side), bg_colors[i1]), mix)

    color_index = int(rng.integers(N_STANDARD_COLORS, len(COLORS)) if ood else rng.integers(N_STANDARD_COLORS))
    color_name, rgb = COLORS[color_index]
    rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)
    count = int(rng.integers(1, len(NUMBER_WORDS) + 1))
    size_name, r_lo, r_hi = SIZES[int(rng.integers(len(SIZES)))]

    radii, centres = [], []
    for _ in range(count):
        r = rng.uniform(r_lo, r_hi)
        for _attempt in range(20):  # prefer positions that do not overlap earlier objects much
            c = rng.uniform(r, 1 - r, 2)
            if all(np.hypot(*(c - c2)) > 0.9 * (r + r2) for c2, r2 in zip(centres, radii, strict=True)):
                break
        radii.append(r)
        centres.append(c)
        theta = rng.uniform(-MAX_ROTATION[shape], MAX_ROTATION[shape])
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        # Each object is drawn into a mask of its own bounding box (cut-outs must not erase others).
        x0, y0 = np.floor((c - r * 1.5) * side).astype(int)
        box = int(np.ceil(3 * r * side)) + 2
        mask = Image.new("L", (box, box), 0)
        draw = ImageDraw.Draw(mask)
        for poly, fill in OUTLINES[shape]:
            pts = (poly @ rot.T) * r * side + c * side - (x0, y0)
            draw.polygon([tuple(p) for p in pts], fill=fill)
        canvas.paste(Image.new("RGB", (box, box), rgb), (int(x0), int(y0)), mask)

    sharp = canvas.reduce(ss)
    lum = np.asarray(sharp.convert("L"), dtype=np.float32) / 255.0
    grad = np.hypot(np.diff(lum, axis=1)[:-1, :], np.diff(lum, axis=0)[:, :-1])
    complexity = float((grad > EDGE_THRESHOLD).mean())

    blurred = sharp.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else sharp
    image = np.asarray(blurred, dtype=np.float32) * brightness
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    factors = {
        "shape": shape,
        "color": color_name,
        "color_index": color_index,
        "object_count": count,
        "size_name": size_name,
        "object_size": float(np.mean(radii)),
        "texture": texture,
        "texture_frequency": float(frequency),
        "palette": palette,
        "style": f"{palette}/{texture}",
        "brightness": brightness,
        "blur": blur,
        "complexity": complexity,
    }
    factors["caption"] = caption(factors, size)
    return image, factors


def caption(f: dict, size: int) -> str:
    """The caption of an image with factors ``f`` (see the module docstring)."""
    quality = []
    if f["brightness"] < 0.7:
        quality.append("dark")
    elif f["brightness"] > 1.3:
        quality.append("bright")
    if f["blur"] > 0.5 * BLUR_MAX_AT_64 * size / 64:
        quality.append("blurry")
    noun = f["shape"] if f["object_count"] == 1 else PLURALS.get(f["shape"], f["shape"] + "s")
    objects = f"{NUMBER_WORDS[f['object_count'] - 1]} {f['size_name']} {f['color']} {noun}"
    return f"a {' '.join([*quality, 'photo'])} of {objects} on a {TEXTURE_WORDS[f['texture']]} background"


def caption_variants(meta: dict) -> list[str]:
    """The captions an image is trained with: its full caption plus, for demo images, shorter ones.

    The shorter ones name only the count and shape (and the colour): with full captions alone the
    other factors tell the images of a batch apart and the shapes are not learnt (see
    :mod:`pipeline.train.clip`). They are built from the same recorded factors as the caption.
    """
    if not {"shape", "object_count", "color"} <= meta.keys():
        return [meta["caption"]]
    n = int(meta["object_count"])
    noun = meta["shape"] if n == 1 else PLURALS.get(meta["shape"], meta["shape"] + "s")
    count = NUMBER_WORDS[n - 1]
    # Half the draws name the shape alone, in the zero-shot prompt's words: only the shape tells those
    # captions apart, so the image tower has to learn it (repeats weight the uniform draw of the trainer).
    shape_only = f"a photo of a {meta['shape']}."
    # The photo's quality words of the caption ("dark", "bright") with the shape alone, in the editing
    # prompts' words: in the full caption they are one factor among seven, and the objective barely
    # learnt them (bright-minus-dark score vs measured brightness on val: correlation 0.38).
    quality = [w for w in meta["caption"].split(" photo of ")[0].split()[1:] if w in ("dark", "bright")]
    shape_quality = f"a {quality[0]} photo of a {meta['shape']}." if quality else shape_only
    return [meta["caption"], f"a photo of {count} {noun}", f"a photo of {count} {meta['color']} {noun}",
            shape_only, shape_only, shape_quality]


# ----------------------------------------------------------------------------- source
@dataclass(frozen=True)
class DemoProcessing:
    """Render and encode one image (runs in the worker processes)."""

    image_format: str
    jpeg_quality: int

    def __call__(self, spec: DemoSpec) -> Prepared:
        image, factors = render(spec)
        row = {"image": encode(image, self.image_format, self.jpeg_quality), "label": spec.index % spec.num_classes,
               "key": f"{spec.split}-{spec.index:06d}", **factors}
        return Prepared(row)


class DemoSource:
    """The demo as a source for the ``prepare`` stage: splits train, val and ood."""

    name = "demo"
    splits = ("train", "val", "ood")

    def __init__(self, seed: int, size: int, num_classes: int, per_class: dict[str, int]) -> None:
        self.seed, self.size, self.num_classes, self.per_class = seed, size, num_classes, per_class
        self.classes = [{"index": i, "wnid": class_wnid(i), "name": n} for i, n in enumerate(class_names(num_classes))]

    def length(self, split: str) -> int:
        return self.per_class[split] * self.num_classes

    def tasks(self, split: str):
        for i in range(self.length(split)):
            yield DemoSpec(self.seed, split, i, self.num_classes, self.size)
