"""Image loading and preprocessing: odd real-world files decode or fail clearly, and normalisation is the encoder's."""

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.preprocess import ImageError, PreprocessConfig, image_to_tensor, load_image, preprocess

from . import images
from .conftest import LITE0


def test_exif_orientation_is_applied():
    img = load_image(images.exif_rotated_jpeg())
    assert img.size == (32, 64)
    arr = np.asarray(img)
    assert arr[2, 16, 0] > 200 and arr[-3, 16, 2] > 200  # rotated CW: red on top, blue at the bottom


@pytest.mark.parametrize("make", [images.cmyk_jpeg, images.grayscale_png, images.rgba_transparent_png,
                                  images.palette_transparency_png, images.sixteen_bit_png, images.animated_gif])
def test_odd_modes_become_8bit_rgb(make):
    img = load_image(make())
    assert img.mode == "RGB"
    assert preprocess(make(), LITE0.preprocess()).shape == (3, 224, 224)


def test_cmyk_keeps_colours():
    arr = np.asarray(load_image(images.cmyk_jpeg())).astype(int)
    assert arr[16, 4, 0] > 200 and arr[16, 4, 2] < 60


def test_transparent_pixels_composite_on_white():
    assert np.asarray(load_image(images.rgba_transparent_png())).min() == 255


def test_sixteen_bit_is_rescaled_not_clipped():
    value = np.asarray(load_image(images.sixteen_bit_png()))[0, 0, 0]
    assert 110 <= value <= 125  # 30000 / 65535 * 255 = 116.7


def test_animation_uses_first_frame():
    assert tuple(np.asarray(load_image(images.animated_gif()))[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"hello, I am text", "not a decodable"),
                                        (images.truncated_jpeg(), "corrupt or truncated")])
def test_bad_data_raises_image_error(data, match):
    with pytest.raises(ImageError, match=match):
        load_image(data)


def test_decompression_bomb_rejected_before_decoding():
    with pytest.raises(ImageError, match="too large"):
        load_image(images.png_bomb())


def test_normalisation_and_resize_modes():
    cfg = PreprocessConfig(size=32, resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = image_to_tensor(Image.new("RGB", (64, 16), (255, 0, 0)), cfg)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[0], torch.ones(32, 32)) and torch.allclose(x[1], -torch.ones(32, 32))
    crop = LITE0.preprocess(size=16, resize="center_crop")
    y = image_to_tensor(images.left_red_right_blue(64, 16), crop)  # centre 16x16 straddles red|blue
    assert y.shape == (3, 16, 16) and y[0, :, 0].mean() > y[0, :, -1].mean()
    with pytest.raises(ValueError):
        LITE0.preprocess(resize="stretch")


def test_normalisation_is_x_over_255_minus_mean_over_std_per_channel():
    rgb = torch.randint(0, 256, (24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = PreprocessConfig(size=24, resize="squash", mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.6))
    x = image_to_tensor(Image.fromarray(rgb.numpy(), "RGB"), cfg)
    expected = (rgb.permute(2, 0, 1).double() / 255 - torch.tensor(cfg.mean, dtype=torch.float64)[:, None, None]) \
        / torch.tensor(cfg.std, dtype=torch.float64)[:, None, None]
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x.double(), expected, atol=1e-5)


def test_paths_and_pil_images_are_accepted(cat_photo):
    cfg = LITE0.preprocess()
    a = preprocess(cat_photo, cfg)
    b = preprocess(cat_photo.read_bytes(), cfg)
    c = preprocess(Image.open(cat_photo), cfg)
    assert torch.equal(a, b) and torch.equal(a, c)
