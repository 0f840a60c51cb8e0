import base64
import io

import pytest
import torch
from PIL import Image

from model_rewrite.errors import InvalidEdit
from model_rewrite.masks import (bounding_box, check_mask, copy_placement, data_url_from_mask, mask_from_data_url, paste_box,
                                 paste_patch, resize_mask)


def test_data_url_round_trip_is_lossless_for_8bit_masks():
    m = torch.randint(0, 256, (16, 16)).float() / 255
    torch.testing.assert_close(mask_from_data_url(data_url_from_mask(m)), m)


def test_alpha_channel_is_the_mask_when_it_varies():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    img.putpixel((2, 3), (255, 0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    m = mask_from_data_url("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    assert m[3, 2] == 1 and m.sum() == 1


def test_oversized_and_bad_masks_are_refused():
    big = Image.new("L", (5000, 10))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    with pytest.raises(InvalidEdit, match="^mask is 5000x10 pixels, over the limit of 2048x2048: paint masks at the image's size$"):
        mask_from_data_url("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    with pytest.raises(InvalidEdit, match="^paste mask is empty: paint at least one pixel$"):
        check_mask(torch.zeros(8, 8), 8, "paste")
    with pytest.raises(InvalidEdit, match="^paste mask holds NaN or infinite values$"):
        check_mask(torch.full((8, 8), float("nan")), 8, "paste")


def test_resize_box_and_paste_clamping():
    m = torch.zeros(64, 64)
    m[8:16, 40:48] = 1
    small = resize_mask(m, 16)
    assert bounding_box(small) == (2, 4, 10, 12) and float(small.sum()) == pytest.approx(4.0)
    assert paste_box((0.0, 63.0), 6, 6, (64, 64)) == (0, 6, 58, 64)


def test_copy_lands_centred_on_the_paste_region_and_inside_the_grid():
    copy, paste = torch.zeros(32, 32), torch.zeros(32, 32)
    copy[4:12, 2:8] = 0.5
    paste[20:22, 10:30] = 1
    assert copy_placement(copy, paste) == ((4, 12, 2, 8), (17, 25, 17, 23))
    edge = torch.zeros(32, 32)
    edge[31, 0] = 1
    assert copy_placement(copy, edge)[1] == (24, 32, 0, 6), "shifted inside the grid"
    with pytest.raises(InvalidEdit, match=r"^copy and paste masks must share a grid to be placed, got \(32, 32\) and \(16, 16\); resize both to the same grid first$"):
        copy_placement(copy, torch.ones(16, 16))


def test_paste_patch_blends_with_alpha_only_inside_the_box():
    target, source = torch.zeros(2, 3, 16, 16), torch.arange(2 * 3 * 16 * 16.0).reshape(2, 3, 16, 16)
    alpha = torch.zeros(16, 16)
    alpha[1:5, 2:4] = torch.tensor([1.0, 0.25])
    out = paste_patch(target, source, alpha, (1, 5, 2, 4), (10, 14, 0, 2))
    assert target.abs().sum() == 0, "the target is not changed in place"
    torch.testing.assert_close(out[..., 10:14, 0:2], alpha[1:5, 2:4] * source[..., 1:5, 2:4], rtol=0, atol=0)
    out[..., 10:14, 0:2] = 0
    assert out.abs().sum() == 0, "nothing outside the box changes"


def test_resize_is_an_area_average_off_the_grid_too():
    """5x5 -> 2x2 by hand: each cell averages the pixels it covers (rows and columns 0-2 and 2-4, overlapping
    at 2), as an area (adaptive average) resize does; bilinear or nearest resizing gives other values."""
    ramp = torch.arange(25.0).reshape(5, 5) / 24
    torch.testing.assert_close(resize_mask(ramp, 2), torch.tensor([[6.0, 8.0], [16.0, 18.0]]) / 24)
    one = torch.zeros(6, 6, dtype=torch.float64)
    one[0, 0] = 1.0  # one pixel of the 2x2 block of cell (0, 0)
    small = resize_mask(one, (3, 3))
    assert small.dtype == torch.float32 and small.shape == (3, 3)
    assert small[0, 0] == 0.25 and float(small.sum()) == 0.25
    wide = resize_mask(torch.ones(4, 6), (2, 3))  # (h, w) sizes
    assert wide.shape == (2, 3) and bool((wide == 1).all())


def test_masks_from_images_use_a_varying_alpha_else_luminance():
    def url(img):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    gray = Image.new("L", (3, 2), 51)
    gray.putpixel((2, 1), 255)
    m = mask_from_data_url(url(gray))
    assert m.shape == (2, 3) and m.dtype == torch.float32 and m[1, 2] == 1.0 and m[0, 0] == pytest.approx(0.2)
    # a constant alpha does not mark a region: the luminance, scaled by that alpha, is the mask
    rgba = Image.new("RGBA", (2, 2), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    assert mask_from_data_url(url(rgba)).tolist() == [[0.0, 1.0], [1.0, 1.0]]
    half = Image.new("RGBA", (1, 1), (255, 255, 255, 51))
    assert mask_from_data_url(url(half))[0, 0] == pytest.approx(0.2)
    la = Image.new("LA", (2, 1), (9, 0))
    la.putpixel((1, 0), (9, 255))
    assert mask_from_data_url(url(la)).tolist() == [[0.0, 1.0]]
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([255, 255, 255, 0, 0, 0])  # entry 0 white and transparent, entry 1 black and opaque
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # the alpha varies: it is the mask, not the (opposite) luminance
    assert mask_from_data_url(url(pal)).tolist() == [[0.0, 1.0]]
    red = Image.new("P", (1, 1), 0)  # a palette image without transparency: its luminance (ITU-R 601-2), 76 for red
    red.putpalette([255, 0, 0])
    assert mask_from_data_url(url(red))[0, 0] == pytest.approx(76 / 255)
    flat = Image.new("LA", (2, 1), (0, 255))  # an alpha that does not vary: the luminance
    flat.putpixel((1, 0), (255, 255))
    assert mask_from_data_url(url(flat)).tolist() == [[0.0, 1.0]]


def test_mask_data_urls_and_files_are_checked(tmp_path):
    for bad in (None, "image/png;base64,AAAA", "data:text/plain;base64,AAAA", "data:image/png,AAAA"):
        with pytest.raises(InvalidEdit, match=r"^a mask must be a PNG data URL \('data:image/png;base64,...'\)$"):
            mask_from_data_url(bad)
    with pytest.raises(InvalidEdit, match="^mask data URL is not valid base64$"):
        mask_from_data_url("data:image/png;base64,!!!")
    from model_rewrite.masks import mask_from_png, png_bytes_from_mask

    path = tmp_path / "m.png"
    path.write_bytes(png_bytes_from_mask(torch.tensor([[0.0, 0.5], [1.2, -1.0]])))
    want = torch.tensor([[0.0, 128.0], [255.0, 0.0]]) / 255  # clamped to [0, 1], rounded to 8 bits
    assert torch.equal(mask_from_png(path), want)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InvalidEdit, match="is not a readable image: it does not start with a PNG header"):
        mask_from_png(tmp_path / "bad.png")


def test_check_mask_names_the_problem_and_clamps():
    with pytest.raises(InvalidEdit, match=r"^paste mask must be 2-D \(H, W\), got shape \(1, 8, 8\)"):
        check_mask(torch.ones(1, 8, 8), 8, "paste")
    with pytest.raises(InvalidEdit, match="^copy mask is 6x4 but the model makes 8x8 images; paint the mask at the image's size$"):
        check_mask(torch.ones(4, 6), 8, "copy")
    with pytest.raises(InvalidEdit, match="^context mask holds NaN or infinite values$"):
        check_mask(torch.full((8, 8), float("inf")), 8, "context")
    with pytest.raises(InvalidEdit, match="^paste mask is empty: paint at least one pixel$"):
        check_mask(-torch.ones(8, 8), 8, "paste")
    m = torch.full((2, 2), 2.0)
    m[0, 0] = -1.0
    assert check_mask(m, 2, "paste").tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_boxes_by_hand():
    from model_rewrite.masks import box_center, scale_box

    m = torch.zeros(6, 6)
    m[1, 2], m[4, 3], m[2, 5] = 0.2, 0.6, 1.0
    assert bounding_box(m) == (1, 5, 2, 6)
    assert bounding_box(m, threshold=0.5) == (2, 5, 3, 6)
    with pytest.raises(InvalidEdit, match="^the mask is empty at this resolution; paint a larger region$"):
        bounding_box(m, threshold=1.0)
    assert scale_box((1, 3, 2, 5), 1.5) == (1, 5, 3, 8)  # rounded outward
    assert scale_box((1, 3, 2, 5), 0.5) == (0, 2, 1, 3)
    assert box_center((2, 6, 1, 4)) == (4.0, 2.5)
    assert paste_box((5.0, 5.0), 3, 4, (10, 10)) == (4, 7, 3, 7)  # round(3.5) = 4, round(3.0) = 3
    assert paste_box((5.0, 5.0), 12, 20, (10, 8)) == (0, 10, 0, 8)  # larger than the grid: clipped to it
    assert paste_box((9.5, 0.2), 4, 2, (10, 10)) == (6, 10, 0, 2)  # shifted inside


def test_copy_placement_threshold_and_a_soft_patch():
    copy, paste = torch.zeros(8, 8), torch.zeros(8, 8)
    copy[1:3, 1:4] = 0.5
    copy[0, 0] = 1e-4  # below the threshold: not part of the copy
    paste[5, 6] = 1.0
    assert copy_placement(copy, paste) == ((1, 3, 1, 4), (4, 6, 5, 8))
    assert copy_placement(copy, paste, threshold=1e-5)[0] == (0, 3, 0, 4)
    target, source = torch.zeros(1, 8, 8), torch.full((1, 8, 8), 4.0)
    out = paste_patch(target, source, copy, (1, 3, 1, 4), (4, 6, 5, 8))
    assert bool((out[0, 4:6, 5:8] == 2.0).all()) and float(out.sum()) == 2.0 * 6


def test_mask_details_that_only_some_images_show(tmp_path):
    def url_of(img):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    # a valid URL with a stray character, or a second payload, is refused rather than read leniently
    good = url_of(Image.new("L", (2, 2), 255))
    head, payload = good.split(";base64,")
    for bad in (f"{head};base64,{payload[:8]}!{payload[8:]}", f"{good};base64,{payload}"):
        with pytest.raises(InvalidEdit, match="^mask data URL is not (valid base64|a readable image)"):
            mask_from_data_url(bad)
    assert mask_from_data_url(url_of(Image.new("L", (2048, 1), 255))).shape == (1, 2048)  # the limit itself is allowed
    # alpha masks and luminance masks are float32 (H, W); an RGB image is read by its luminance
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    assert mask_from_data_url(url_of(rgba)).dtype == torch.float32
    const = mask_from_data_url(url_of(Image.new("RGBA", (3, 2), (255, 255, 255, 51))))
    assert const.dtype == torch.float32 and const.shape == (2, 3)
    rgb = Image.new("RGB", (3, 2), (255, 255, 255))
    rgb.putpixel((0, 1), (0, 0, 0))
    m = mask_from_data_url(url_of(rgb))
    assert m.shape == (2, 3) and m.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert check_mask(torch.full((2, 2), 0.5), 2, "paste").tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_copy_placement_on_a_wide_grid_ignores_faint_paste_pixels():
    copy, paste = torch.zeros(6, 10), torch.zeros(6, 10)
    copy[1:4, 0:4] = 1.0  # 3 x 4
    paste[5, 9] = 1.0  # centre (5.5, 9.5): the box is shifted inside the 6 rows and the 10 columns
    paste[0, 0] = 1e-4  # below the threshold: not part of the paste region
    assert copy_placement(copy, paste) == ((1, 4, 0, 4), (3, 6, 6, 10))
