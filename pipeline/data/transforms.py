"""Image processing shared by every source: decode, convert to RGB, ADM centre crop, encode; and the
conversion of stored uint8 images to a model's float input (:func:`to_model_input`).

Centre crop (ADM ``center_crop_arr`` convention, used by ADM, DiT, MAR and the ImageNet FID
references): while the short side is at least ``2 * size``, halve both sides with a BOX filter
(integer division); then resize with BICUBIC so that the short side is exactly ``size`` (the long side
is ``round(long * size / short)``); then cut the central ``size x size`` window, the offset rounded
down. (Resizing only the crop window with PIL's ``box=`` argument would be faster but is not
pixel-identical, so the whole image is resized.)

Draft mode (the speed feature): for JPEG input, libjpeg can decode at 1/2, 1/4 or 1/8 scale in the
DCT domain. :func:`decode_rgb` asks for the largest such reduction that keeps both sides at least
``size``, which is the same number of halvings the BOX loop above would make (up to 8x), then hands
the result to the same loop and resize. Its pixels differ slightly from a full decode followed by BOX
halvings (DCT-domain scaling instead of pixel averaging, sides rounded up instead of down); set
``prepare.jpeg_draft: false`` for the exact ADM pixels. Where the short side is below ``2 * size``
(e.g. a 500x375 photo cropped to 256) draft mode changes nothing.

RGB policy: grayscale (``1``, ``L``, ``I``, ``F``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette
images are converted with PIL's ``convert("RGB")``. Images with transparency (``RGBA``, ``LA``, ``PA``,
palette or grayscale with a transparent colour) are composited on a white background, as a viewer
would show them. EXIF orientation is not applied (neither ADM nor torchvision applies it).

Bad input policy (the caller records every skip and repair, see :class:`Decoded` and
:class:`SkipImage`):

- zero-byte file: skipped;
- file that cannot be read (broken link, permission, a folder): skipped;
- data PIL cannot identify as an image: skipped;
- truncated or corrupt JPEG: decoded again with ``ImageFile.LOAD_TRUNCATED_IMAGES`` (libjpeg fills the
  missing part with one constant colour, grey for a baseline JPEG) and kept as *repaired*; skipped if
  that fails too, and skipped (``mostly_fill``) when more than ``MAX_FILL_FRACTION`` of the decoded rows,
  counted from the bottom, are that fill: a JPEG cut to a few KB "repairs" into a grey image that would
  enter training and the FID statistics as a real photo;
- PNG (or any other format) or CMYK data in a file named ``.JPEG``: converted and kept as *repaired*.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile


class SkipImage(Exception):
    """This input cannot be used: ``kind`` is one of ``SKIP_KINDS``, ``detail`` says more."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


SKIP_KINDS = ("empty", "unreadable", "not_an_image", "too_large", "corrupt", "mostly_fill", "no_label",
              "unknown_label", "outside_class_folder")

# A repaired decode whose bottom rows are fill for more than this fraction of the height is mostly made up
# by the decoder, not the photo: skipped. Less (a JPEG that lost its last few hundred bytes) is kept as
# repaired, as before; half is where the made-up part would outweigh the real one.
MAX_FILL_FRACTION = 0.5


@dataclass
class Decoded:
    """One processed image and what had to be done to get it."""

    image: np.ndarray  # (size, size, 3) uint8
    width: int  # original size, before draft decoding
    height: int
    notes: list[str] = field(default_factory=list)  # conversions made, e.g. "CMYK -> RGB"
    repaired: bool = False  # True when the input was damaged or mislabelled (listed in skipped.json)


@dataclass
class Prepared:
    """A row ready for a shard (``row`` holds every column, ``image`` encoded)."""

    row: dict
    notes: list[str] = field(default_factory=list)
    repaired: bool = False


@dataclass
class Skipped:
    """An input left out, for ``skipped.json``."""

    file: str
    kind: str
    detail: str


def apply(process, task):
    """``process(task)``, passing through inputs that were already skipped while listing (pool entry)."""
    return task if isinstance(task, Skipped) else process(task)


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """``img`` as an RGB image and a note of the conversion (None when it already was RGB)."""
    if img.mode == "RGB":
        return img, None
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"{img.mode} with alpha -> RGB on white"
    return img.convert("RGB"), f"{img.mode} -> RGB"


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """The central ``size x size`` crop after ADM's short-side resize, as a (size, size, C) uint8 array."""
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    scale = size / min(img.size)
    full_w, full_h = round(img.width * scale), round(img.height * scale)
    img = img.resize((full_w, full_h), Image.Resampling.BICUBIC)
    left, top = (full_w - size) // 2, (full_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; :class:`SkipImage` when it is empty or cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise SkipImage("unreadable", f"{type(err).__name__}: {err.strerror or err}") from None
    if not data:
        raise SkipImage("empty", "0 bytes")
    return data


def _open(data: bytes) -> Image.Image:
    """Read the header only; :class:`SkipImage` when ``data`` is not an image PIL knows."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise SkipImage("too_large", str(err)) from None
    except Image.UnidentifiedImageError:
        raise SkipImage("not_an_image", "PIL cannot identify the format") from None
    except Exception as err:  # garbage headers of known formats
        raise SkipImage("not_an_image", f"{type(err).__name__}: {err}") from None


def _load(img: Image.Image, size: int, draft: bool) -> Image.Image:
    if draft and img.format == "JPEG":
        img.draft("RGB", (size, size))
    img.load()
    return img


def fill_fraction(image: Image.Image) -> float:
    """Fraction of ``image``'s rows, counted up from the bottom, that are one constant colour throughout.

    That colour is the bottom-right pixel's: where a truncated baseline JPEG ends, libjpeg (with
    ``LOAD_TRUNCATED_IMAGES``) decodes the missing MCU rows as flat fill, so the made-up part is a run
    of identical rows at the bottom (the partly decoded MCU row above it is not counted).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    fill = a[-1, -1]
    constant = (a == fill).all(axis=(1, 2))  # (H,): the row is nothing but the fill colour
    rows = len(constant) if constant.all() else int(np.argmin(constant[::-1]))
    return rows / max(len(constant), 1)


def decode_rgb(data: bytes, size: int, draft: bool = True, name: str = "") -> Decoded:
    """Decode encoded image ``data`` into the ``size x size`` RGB centre crop.

    ``name`` (the file name, if any) lets a format that does not match a ``.jpeg`` / ``.jpg``
    extension be reported as repaired.
    """
    if not data:
        raise SkipImage("empty", "0 bytes")
    notes: list[str] = []
    repaired = damaged = False
    img = _open(data)
    fmt, width, height = img.format, img.width, img.height
    try:
        img = _load(img, size, draft)
    except Exception:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img = _load(_open(data), size, draft)
        except Exception as err2:
            raise SkipImage("corrupt", f"{fmt}: {type(err2).__name__}: {err2}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        notes.append(f"damaged {fmt} decoded with LOAD_TRUNCATED_IMAGES")
        repaired = damaged = True
    if damaged and (fill := fill_fraction(img)) > MAX_FILL_FRACTION:
        colour = tuple(int(v) for v in np.asarray(img)[-1, -1].flat)
        raise SkipImage("mostly_fill", f"damaged {fmt}: {fill:.0%} of the decoded rows (from the bottom) are "
                                       f"constant fill {colour} made up by LOAD_TRUNCATED_IMAGES, not image data")
    if name.lower().endswith((".jpeg", ".jpg")) and fmt != "JPEG":
        notes.append(f"{fmt} data in a .JPEG file")
        repaired = True
    rgb, note = to_rgb(img)
    if note:
        notes.append(note)
        repaired = repaired or img.mode == "CMYK"
    return Decoded(center_crop_arr(rgb, size), width, height, notes, repaired)


def encode(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode a (H, W, 3) uint8 array as PNG (lossless, fast zlib level) or JPEG at ``quality``."""
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        pil.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        raise ValueError(f"unknown image format {fmt!r} (expected png or jpeg)")
    return buf.getvalue()


def decode_stored(data: bytes) -> np.ndarray:
    """A stored (already cropped) image back as a (H, W, 3) uint8 array."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def to_model_input(images, size: int, mode: str = "bilinear"):
    """uint8 (N, H, W, 3) images (numpy or torch) or float (N, 3, H, W) ones -> float (N, 3, size, size) in [0, 1].

    uint8 is divided by 255; images not ``size`` x ``size`` are resized with ``mode`` (``bilinear`` for
    token optimisation, ``bicubic`` for the token-manipulation study: two resamplings whose pixels differ,
    each kept as its stage has always used it), antialiased, then clamped to [0, 1].
    """
    # torch only here: the prepare workers import this module and start faster without it
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(images)
    x = x.permute(0, 3, 1, 2) if x.shape[-1] == 3 and x.shape[1] != 3 else x  # NHWC -> NCHW
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False).clamp(0, 1)
    return x
