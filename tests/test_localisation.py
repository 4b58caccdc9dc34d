"""Frame and ink shares of attribution maps (mnist_xai_metrics.localisation): known answers."""
import numpy as np
import pytest

import mnist_xai_metrics as M


def _digit_images(n=3):
    """Black images with a bright vertical bar (the ink) in the middle."""
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 6:22, 12:15] = 1.0
    return x


def test_frame_mask_is_the_outer_ring():
    f = M.frame_mask()
    assert f.shape == (28, 28) and f.dtype == bool
    assert f.sum() == 28 * 28 - 20 * 20 and abs(f.mean() - 0.4898) < 1e-4  # 49.0% of the area
    assert f[0, 14] and f[3, 14] and not f[4, 14] and f[14, 24] and not f[14, 23]
    assert M.frame_mask(1).sum() == 28 * 4 - 4


def test_all_frame_uniform_and_ink_maps():
    images = _digit_images()
    frame = M.frame_mask()
    all_frame = np.broadcast_to(frame, (3, 28, 28)).astype(np.float32)
    loc = M.localisation(images, all_frame)
    np.testing.assert_allclose(loc["frame_share"], 1.0)
    np.testing.assert_allclose(loc["frame_ratio"], 1 / frame.mean())
    np.testing.assert_allclose(loc["ink_share"], 0.0)  # the bar is inside the interior

    uniform = M.localisation(images, np.full((3, 28, 28), 0.3, np.float32))
    np.testing.assert_allclose(uniform["frame_share"], (784 - 400) / 784, rtol=1e-6)
    np.testing.assert_allclose(uniform["frame_share"], 0.4898, atol=1e-4)
    np.testing.assert_allclose(uniform["frame_ratio"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(uniform["ink_ratio"], 1.0, rtol=1e-6)

    ink = (images[..., 0] > M.INK_THRESHOLD).astype(np.float32)
    on_ink = M.localisation(images, ink)
    ink_area = 16 * 3 / 784
    np.testing.assert_allclose(on_ink["ink_area"], ink_area)
    np.testing.assert_allclose(on_ink["ink_share"], 1.0)
    np.testing.assert_allclose(on_ink["ink_ratio"], 1 / ink_area, rtol=1e-6)
    np.testing.assert_allclose(on_ink["frame_share"], 0.0)


def test_negative_values_are_ignored_and_zero_maps_score_as_uniform():
    images = _digit_images(2)
    maps = -np.ones((2, 28, 28), np.float32)  # all negative: no positive evidence anywhere
    maps[0][M.frame_mask()] = 2.0  # image 0: positive on the frame only, negative inside
    loc = M.localisation(images, maps)
    assert loc["frame_share"][0] == 1.0 and not loc["empty"][0]
    assert loc["empty"][1]
    zero = M.localisation(images, np.zeros((2, 28, 28), np.float32))
    for out in (zero, {k: v[1:] for k, v in loc.items()}):
        assert out["empty"].all()
        np.testing.assert_allclose(out["frame_share"], out["frame_area"])
        np.testing.assert_allclose(out["frame_ratio"], 1.0)
        np.testing.assert_allclose(out["ink_ratio"], 1.0)
    for value in zero.values():
        assert not np.isnan(np.asarray(value, np.float64)).any()
    blank = M.localisation(np.zeros((1, 28, 28, 1), np.float32), np.ones((1, 28, 28), np.float32))
    assert blank["ink_area"][0] == 0 and blank["ink_ratio"][0] == 1.0  # no ink: no preference, no NaN


def test_shares_are_per_image_and_scale_free():
    images = _digit_images(2)
    rng = np.random.default_rng(0)
    maps = rng.random((2, 28, 28)).astype(np.float32)
    a = M.localisation(images, maps)
    b = M.localisation(images, maps * np.array([3.0, 0.01], np.float32)[:, None, None])
    for k in ("frame_share", "ink_share", "frame_ratio", "ink_ratio"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    one = M.localisation(images[1], maps[1])
    np.testing.assert_allclose(one["frame_share"], a["frame_share"][1:], rtol=1e-6)


def test_by_class_and_localisation_by_class():
    np.testing.assert_allclose(M.by_class([1.0, 3.0, 5.0], [2, 2, 0], 3), [5.0, np.nan, 2.0])
    images = _digit_images(4)
    maps = np.zeros((4, 28, 28), np.float32)
    maps[:2][:, M.frame_mask()] = 1.0  # class 1: all frame
    maps[2:] = 1.0  # class 7: uniform
    out = M.localisation_by_class(images, maps, [1, 1, 7, 7])
    assert out["count"][1] == 2 and out["count"][7] == 2 and out["count"][0] == 0
    assert out["frame_share"][1] == 1.0 and abs(out["frame_share"][7] - 0.4898) < 1e-4
    assert np.isnan(out["frame_share"][0]) and out["empty_maps"] == 0
    assert abs(out["frame_share_mean"] - (1 + 0.4898) / 2) < 1e-4


@pytest.mark.parametrize("call, match", [
    (lambda: M.localisation(_digit_images(2), np.zeros((3, 28, 28))), r"maps: expected one 28x28 map per image, \(2, 28, 28\)"),
    (lambda: M.localisation(_digit_images(1), np.full((28, 28), np.nan)), "maps: expected finite values"),
    (lambda: M.localisation(_digit_images(1) * 255, np.zeros((28, 28))), r"images: expected float pixels in \[0, 1\]"),
    (lambda: M.localisation(_digit_images(1), np.zeros((28, 28)), border=14), "border: expected fewer than 14 px"),
    (lambda: M.localisation(_digit_images(1), np.zeros((28, 28)), border=2.5), "border: expected an integer"),
    (lambda: M.localisation(_digit_images(1), np.zeros((28, 28)), threshold=1.5), r"threshold: expected an ink threshold in \[0, 1\)"),
    (lambda: M.localisation(_digit_images(1), np.zeros((28, 28)), threshold="x"), "threshold: expected a finite number"),
    (lambda: M.by_class([1.0, 2.0], [0, 10]), "classes: expected integers in 0-9"),
    (lambda: M.by_class([1.0, 2.0], [0]), "by_class: expected values and classes of the same shape"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
