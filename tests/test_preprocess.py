"""mnist_preprocess.to_mnist: drawings come out the way MNIST's digits were made (known answers)."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_data import load_sample_digits
from mnist_preprocess import NoInkError, center_of_mass, to_mnist


def ink_box(img, level=0.0):
    rows, cols = np.flatnonzero((img > level).any(1)), np.flatnonzero((img > level).any(0))
    return rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def drawing(size=(300, 400), box=(40, 60, 200, 120), width=14, background=0, ink=255):
    """A '0'-like ellipse of the given box (top, left, height, width) on a canvas (H, W), uint8."""
    im = Image.new("L", (size[1], size[0]), background)
    top, left, h, w = box
    ImageDraw.Draw(im).ellipse([left, top, left + w, top + h], outline=ink, width=width)
    return np.asarray(im)


def check_mnist_like(out):
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.9
    cy, cx = center_of_mass(out)
    assert abs(cy - 14) <= 0.5 + 1e-3 and abs(cx - 14) <= 0.5 + 1e-3, (cy, cx)  # +1e-3: float rounding at a tie
    _, _, h, w = ink_box(out)
    assert max(h, w) == 20 and min(h, w) <= 20


def placed(digit, scale, top, left, size=(400, 500)):
    """An MNIST digit (28, 28) uint8 scaled up ``scale`` times onto a larger black canvas."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR))
    canvas = np.zeros(size, np.uint8)
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return canvas


def test_shifted_and_scaled_digits_come_out_centred_in_a_20px_box():
    sample = load_sample_digits()
    for i in (0, 1, 7):
        digit = sample.images[i, :, :, 0]
        small = to_mnist(placed(digit, 2, 5, 7))  # small, in the corner
        large = to_mnist(placed(digit, 12, 40, 120))  # large, off-centre
        for out in (small, large):
            check_mnist_like(out)
            assert np.corrcoef(out.ravel(), digit.ravel() / 255.0)[0, 1] > 0.9
        assert np.corrcoef(small.ravel(), large.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("box", [(40, 60, 200, 100), (40, 60, 100, 200), (5, 5, 290, 60)])
def test_aspect_ratio_is_kept(box):
    out = to_mnist(drawing(box=box, width=10))
    check_mnist_like(out)
    _, _, h, w = ink_box(out, 0.2)  # the faint anti-aliased rim aside
    assert abs(h / w - box[2] / box[3]) < 0.25 * box[2] / box[3], (h, w, box)


def test_black_on_white_is_inverted_and_matches_white_on_black():
    white_on_black = to_mnist(drawing(background=0, ink=255))
    black_on_white, info = to_mnist(drawing(background=255, ink=0), return_info=True)
    assert info.inverted
    assert np.abs(white_on_black - black_on_white).max() < 0.02
    check_mnist_like(black_on_white)


def test_rgb_rgba_float_and_uint8_agree():
    gray = drawing()
    base = to_mnist(gray)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    assert np.abs(to_mnist(rgb) - base).max() < 0.02
    assert np.abs(to_mnist(gray / 255.0) - base).max() < 0.02
    assert np.abs(to_mnist(gray.astype(np.float32)) - base).max() < 0.02  # floats in 0-255
    # a canvas: black ink on a transparent background (alpha = ink), any colour of stroke
    rgba = np.zeros((*gray.shape, 4), np.uint8)
    rgba[..., 3] = gray
    assert np.abs(to_mnist(rgba) - base).max() < 0.02
    rgba[..., 0] = 200  # red ink
    assert np.abs(to_mnist(rgba) - base).max() < 0.02


def test_real_mnist_digits_pass_through_almost_unchanged():
    sample = load_sample_digits()
    corr = []
    for digit in sample.images[..., 0]:
        out = to_mnist(digit)
        corr.append(np.corrcoef(out.ravel(), digit.ravel() / 255.0)[0, 1])
    corr = np.array(corr)
    assert corr[0] > 0.99
    assert np.median(corr) > 0.99 and (corr > 0.9).mean() >= 0.99, np.sort(corr)[:3]


def test_empty_and_faint_images_raise_no_ink():
    for blank in (np.zeros((280, 280), np.uint8), np.full((50, 50, 3), 255, np.uint8),
                  np.zeros((280, 280, 4), np.uint8), np.full((28, 28), 0.5, np.float32),
                  np.full((10, 10), 12, np.uint8)):  # 12/255: below the 10% contrast floor
        with pytest.raises(NoInkError, match="no ink"):
            to_mnist(blank)
    with pytest.raises(NoInkError):
        to_mnist(np.zeros((0, 5), np.uint8))
    assert issubclass(NoInkError, ValueError)


def test_bad_arrays_are_refused_with_a_message():
    with pytest.raises(ValueError, match="shape"):
        to_mnist(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="finite"):
        to_mnist(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="dtype"):
        to_mnist(np.array([["a"]]))


def test_tiny_dot_and_full_scribble_are_flagged():
    dot = np.zeros((280, 280), np.uint8)
    dot[100:104, 150:154] = 255
    out, info = to_mnist(dot, return_info=True)
    check_mnist_like(out)
    assert any("tiny" in n for n in info.notes)
    scribble = np.full((280, 280, 4), 0, np.uint8)
    scribble[..., 3] = 255
    scribble[0, 0, 3] = 0  # transparent somewhere: a canvas painted almost all over
    out, info = to_mnist(scribble, return_info=True)
    assert out.shape == (28, 28) and any("covers" in n for n in info.notes)
    _, info = to_mnist(drawing(), return_info=True)
    assert info.notes == ()


def test_huge_image_is_read_quickly_and_alike():
    import time
    digit = load_sample_digits().images[0, :, :, 0]
    big = placed(digit, 180, 300, 600, size=(6000, 6000))  # a 5,040 px digit in a 36-megapixel image
    t0 = time.perf_counter()
    out, info = to_mnist(big, return_info=True)
    assert time.perf_counter() - t0 < 10  # block-averaged first, not resampled in full
    check_mnist_like(out)
    assert np.corrcoef(out.ravel(), digit.ravel() / 255.0)[0, 1] > 0.95
    top, left, h, w = info.box
    rows = np.flatnonzero(digit.any(1))
    assert abs(top - (300 + 180 * rows[0])) < 200 and 600 < left < 600 + 180 * 28  # in the input's own pixels


def test_digit_against_the_edge_stays_inside_the_field():
    # a lopsided shape whose centre of mass is far off its box centre: no ink is cut off
    im = np.zeros((100, 100), np.uint8)
    im[10:90, 10:20] = 255  # a thick vertical bar...
    im[80:90, 10:90] = 40   # ...and a faint long foot
    out = to_mnist(im)
    _, _, h, w = ink_box(out)
    assert (h, w) == (20, 20)  # the whole 20x20 box is in the field (clipping would narrow it)
