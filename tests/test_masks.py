import base64
import io

import pytest
import torch
from PIL import Image

from model_rewrite.errors import InvalidEdit
from model_rewrite.masks import bounding_box, check_mask, data_url_from_mask, mask_from_data_url, paste_box, resize_mask


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
