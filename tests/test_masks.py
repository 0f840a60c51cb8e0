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
    with pytest.raises(InvalidEdit, match="limit"):
        mask_from_data_url("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    with pytest.raises(InvalidEdit, match="empty"):
        check_mask(torch.zeros(8, 8), 8, "paste")
    with pytest.raises(InvalidEdit, match="NaN"):
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
    with pytest.raises(InvalidEdit, match="share a grid"):
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
