"""Image processing: ADM centre crop, RGB conversion, draft decoding, the bad-input policy."""

import io

import numpy as np
import pytest
from imagenet_folder import corrupt_jpeg, jpeg_bytes, photo, png_bytes
from PIL import Image

from pipeline.data.transforms import (
    SkipImage,
    center_crop_arr,
    decode_rgb,
    decode_stored,
    encode,
    fill_fraction,
    to_rgb,
)


def adm_reference(img: Image.Image, size: int) -> np.ndarray:
    """ADM's convention written out naively: BOX halvings, BICUBIC resize of the whole image, numpy crop."""
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    s = size / min(img.size)
    arr = np.array(img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


@pytest.mark.parametrize(("w", "h", "size"), [(500, 375, 256), (375, 500, 64), (40, 30, 64), (1031, 97, 32),
                                              (64, 64, 64), (257, 1000, 128)])
def test_center_crop_arr_matches_adm_convention(w, h, size):
    img = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = center_crop_arr(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, adm_reference(img, size))


def test_center_crop_arr_known_case():
    # 200x100 to 25: the short side is >= 50 twice, so two BOX halvings give 50x25 (on 4x4 blocks of
    # one colour, exactly the block colours); BICUBIC at scale 1 leaves it alone; the crop starts at
    # column (50 - 25) // 2 = 12.
    coarse = np.random.default_rng(0).integers(0, 256, (25, 50, 3), dtype=np.uint8)
    img = Image.fromarray(np.kron(coarse, np.ones((4, 4, 1), np.uint8)))
    np.testing.assert_array_equal(center_crop_arr(img, 25), coarse[:, 12:37])
    # No resize at all: a 96x32 image cut to 32 is columns 32..63.
    arr = np.random.default_rng(1).integers(0, 256, (32, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(arr), 32), arr[:, 32:64])


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "1", "I"])
def test_to_rgb_converts_every_mode(mode):
    img = photo(3, 20, 10).convert(mode)
    rgb, note = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (20, 10) and note


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    rgb, note = to_rgb(img)
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (255, 0, 0)
    assert "white" in note
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 1
    assert to_rgb(pal)[0].getpixel((0, 0)) == (255, 255, 255)


def test_rgb_passes_through():
    img = photo(0, 8, 8)
    assert to_rgb(img) == (img, None)


def test_draft_mode_decodes_smaller_and_stays_close():
    data = jpeg_bytes(photo(5, 1024, 768), quality=95)
    probe = Image.open(io.BytesIO(data))
    probe.draft("RGB", (64, 64))
    assert probe.size == (128, 96)  # 1/8 scale: the largest keeping the short side >= 64... and 96 >= 64
    fast, exact = decode_rgb(data, 64, draft=True), decode_rgb(data, 64, draft=False)
    assert fast.image.shape == exact.image.shape == (64, 64, 3)
    assert (fast.width, fast.height) == (1024, 768)
    assert np.abs(fast.image.astype(int) - exact.image).mean() < 3
    # Where no halving would happen the draft changes nothing.
    small = jpeg_bytes(photo(6, 500, 375))
    np.testing.assert_array_equal(decode_rgb(small, 256, draft=True).image, decode_rgb(small, 256, draft=False).image)


def test_decode_reports_conversions_and_repairs():
    base = photo(1, 50, 40)
    assert decode_rgb(jpeg_bytes(base), 16).notes == []
    gray = decode_rgb(jpeg_bytes(base.convert("L")), 16)
    assert gray.notes == ["L -> RGB"] and not gray.repaired
    cmyk = decode_rgb(jpeg_bytes(base.convert("CMYK")), 16)
    assert cmyk.notes == ["CMYK -> RGB"] and cmyk.repaired
    png = decode_rgb(png_bytes(base), 16, name="x_1.JPEG")
    assert png.notes == ["PNG data in a .JPEG file"] and png.repaired
    assert decode_rgb(png_bytes(base), 16, name="x_1.png").notes == []
    truncated = decode_rgb(jpeg_bytes(base)[:-200], 16)
    assert truncated.repaired and "LOAD_TRUNCATED_IMAGES" in truncated.notes[0]


def test_a_jpeg_truncated_to_a_few_kb_is_skipped_as_mostly_fill():
    """PIL decodes the lost part of a baseline JPEG as grey rows; a file cut to 3 KB is mostly that grey."""
    photo_jpeg = jpeg_bytes(photo(8, 500, 375))
    assert len(photo_jpeg) > 10_000
    with pytest.raises(SkipImage) as err:
        decode_rgb(photo_jpeg[:3000], 32)
    assert err.value.kind == "mostly_fill"
    assert "% of the decoded rows" in err.value.detail and "(128, 128, 128)" in err.value.detail
    kept = decode_rgb(photo_jpeg, 32)  # the whole file: kept, nothing to report
    assert kept.notes == [] and not kept.repaired
    assert decode_rgb(photo_jpeg[:-300], 32).repaired  # a few hundred bytes lost: a thin grey band, kept


def test_fill_fraction_counts_constant_rows_from_the_bottom():
    a = np.full((10, 4, 3), 128, np.uint8)
    a[:3, 0] = 7  # rows 0-2 hold image data, 3-9 are fill
    assert fill_fraction(Image.fromarray(a)) == 0.7
    assert fill_fraction(Image.fromarray(np.full((5, 5), 128, np.uint8))) == 1.0
    a[-1, 0] = 9  # the bottom row is not uniform: no fill at all
    assert fill_fraction(Image.fromarray(a)) == 0.0


@pytest.mark.parametrize(("data", "kind"), [(b"", "empty"), (b"hello", "not_an_image"),
                                            (corrupt_jpeg(jpeg_bytes(photo(2, 50, 40))), "corrupt")])
def test_bad_inputs_are_skipped_with_a_kind(data, kind):
    with pytest.raises(SkipImage) as err:
        decode_rgb(data, 16)
    assert err.value.kind == kind


def test_encode_round_trips():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_stored(encode(img, "png")), img)
    lossy = decode_stored(encode(img, "jpeg", 95))
    assert lossy.shape == img.shape
