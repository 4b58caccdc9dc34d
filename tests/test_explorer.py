"""explore_mnist_xai without a browser: the computation, the page's handlers, bad input, start-up errors.

One Explorer is built per module (each method compiles once per process); the browser test
(test_explorer_browser.py) runs the same programs when both run in one pytest session.
"""
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import explore_mnist_xai as E
import mnist_xai_metrics as M
import mnist_xai_visualizations as X
from mnist_data import load_sample_digits

#: A few methods, one family or more each, so that every test stays fast; the page shows every
#: registered method by default (test_methods_come_from_the_registry).
SUBSET = ("gradcam", "saliency", "gradient_x_input", "integrated_gradients", "occlusion", "guided_backprop")
SHOWN = E.methods_in_order(SUBSET)
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

ROOT = Path(__file__).resolve().parents[1]


def canvas(strokes=(), width=22, size=E.CANVAS):
    """What the page's canvas sends: black ink on a transparent 280x280 canvas, as a PNG data URL."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    for s in strokes:
        d.line(s, fill=(0, 0, 0, 255), width=width, joint="curve")
    return E.png_data_url(np.asarray(im))


VERTICAL = [[(140, 40), (140, 240)]]  # a "1"
LOOP = [[(140 + 70 * np.cos(a), 140 + 100 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 60)]]  # a "0"


@pytest.fixture(scope="module")
def samples():
    return load_sample_digits()


@pytest.fixture(scope="module")
def explorer():
    return E.Explorer(E.load_models(None), methods=SUBSET)


@pytest.fixture(scope="module")
def app(explorer, samples):
    return E.App(explorer, samples)


def last(gen):
    out = list(gen)
    assert out, "the handler yielded nothing"
    return out, out[-1]


def test_methods_come_from_the_registry(monkeypatch):
    from mnist_xai import registry as R
    order = [k for k, _ in R.FAMILIES]
    shown = E.methods_in_order()
    assert shown == R.method_names() and len(shown) >= 31  # every registered method, by family
    assert [order.index(R.SPECS[m].family) for m in shown] == sorted(order.index(R.SPECS[m].family) for m in shown)
    st = E.stages()
    assert st[0] == E.FIRST and sorted(m for s in st for m in s) == sorted(shown)
    costs = [R.COSTS.index(R.SPECS[s[0]].cost) for s in st[1:]]
    assert costs == sorted(costs) and all(len(s) == 1 for s in st[1:] if R.SPECS[s[0]].cost != "fast")
    assert E.stages(SUBSET)[0] == ("gradcam", "saliency") and E.title("gradient_x_input") == "Gradient×Input"
    with pytest.raises(ValueError, match="registered names, got nosuch"):
        E.methods_in_order(["gradcam", "nosuch"])

    # a method registered later appears on the page, titled, in its family, with no edit here
    class Doubled(X.METHODS["saliency"]):
        pass
    monkeypatch.setattr(R, "METHODS", dict(R.METHODS))
    monkeypatch.setattr(R, "SPECS", dict(R.SPECS))
    R.register("doubled_test", title="Doubled (test)", family="path", cost="slow", reference="-", paper="-")(Doubled)
    assert "doubled_test" in E.methods_in_order() and ("doubled_test",) in E.stages()
    assert E.stages().index(("doubled_test",)) > max(i for i, s in enumerate(E.stages()) if R.SPECS[s[0]].cost != "slow")
    r = E.ModelResult("m", "d", probs=np.full(10, 0.1), pred=3, targets=[3])
    page = E.render_model(r, np.zeros((28, 28)))
    sections = re.findall(r'<section class="xe-family" data-family="(\w+)">', page)
    assert sections == [k for k in order if any(R.SPECS[m].family == k for m in R.SPECS)]
    path = page[page.index('data-family="path"'):]
    assert 'data-method="doubled_test"' in path.split("</section>")[0] and "Doubled (test)" in page
    assert page.count('class="xe-map pending"') == len(R.SPECS)


def test_option_menus_come_from_the_registry():
    from mnist_xai import registry as R
    menu = E.option_menu()
    assert ("integrated_gradients", R.SPECS["integrated_gradients"].option("steps")) in menu
    assert all(len(o.choices) > 1 for _, o in menu)
    assert E.Options.parse() == E.Options() and E.Options().for_method("integrated_gradients") == {}
    o = E.Options.parse({("integrated_gradients", "steps"): "16", ("occlusion", "patch"): 8, ("smoothgrad", "samples"): ""})
    assert o.for_method("integrated_gradients") == {"steps": 16} and o.for_method("occlusion") == {"patch": 8}
    assert o.for_method("smoothgrad") == {} and E.Options.parse(occlusion__patch="2").for_method("occlusion") == {"patch": 2}
    # the page sends every dropdown; a default is no setting, so the warm-up's programs serve it
    assert E.Options.parse({("integrated_gradients", "steps"): "100", ("occlusion", "patch"): "4"}) == E.Options()
    with pytest.raises(ValueError, match=r"^Integrated Gradients: steps: expected one of 16, 32, 64, 100, got '17'$"):
        E.Options.parse({("integrated_gradients", "steps"): "17"})
    with pytest.raises(ValueError, match="expected options among"):
        E.Options.parse({("occlusion", "nosuch"): 1})
    with pytest.raises(ValueError, match="method: expected one of"):
        E.Options.parse({("nosuch", "steps"): 1})


def test_signed_maps_are_centred_at_zero_and_unsigned_run_from_white():
    import matplotlib
    signed = np.zeros((28, 28))
    signed[0, 0], signed[0, 1], signed[0, 2] = 2.0, -1.0, 1.0  # max |value| 2: -1 at 0.25, 0 at 0.5, 1 at 0.75
    px = decode(E.map_picture(signed, True))
    cm = matplotlib.colormaps[E.SIGNED_CMAP]
    for (i, j), at in (((0, 0), 1.0), ((0, 1), 0.25), ((0, 2), 0.75), ((5, 5), 0.5)):
        np.testing.assert_allclose(px[i, j], np.round(np.asarray(cm(at))[:3] * 255), atol=1)
    np.testing.assert_allclose(px[5, 5], [247, 247, 247], atol=1)  # 0 is (near) white
    unsigned = np.full((28, 28), 3.0)
    unsigned[1, 1] = 7.0
    px = decode(E.map_picture(unsigned, False))
    cu = matplotlib.colormaps[E.UNSIGNED_CMAP]
    np.testing.assert_allclose(px[1, 1], np.round(np.asarray(cu(1.0))[:3] * 255), atol=1)
    np.testing.assert_allclose(px[9, 9], np.round(np.asarray(cu(0.0))[:3] * 255), atol=1)
    assert (decode(E.map_picture(np.zeros((28, 28)), True)) == decode(E.map_picture(np.zeros((28, 28)), True))[0, 0]).all()


def test_the_outline_is_the_edge_of_the_enlarged_ink():
    from PIL import Image
    from scipy import ndimage
    image = np.zeros((28, 28), np.float32)
    image[8:20, 10:18] = 1.0
    edge = E.outline_mask(image, 5)
    big = np.asarray(Image.fromarray(image).resize((140, 140), Image.Resampling.BILINEAR))
    mask = big >= 0.5
    expected = mask & ~ndimage.binary_erosion(mask, border_value=1)
    np.testing.assert_array_equal(edge, expected)
    assert 0 < edge.sum() < 0.2 * mask.sum() and not edge[~mask].any()  # a thin line on the ink's rim
    rgba = decode(E.outline_picture(image), "RGBA")
    assert ((rgba[..., 3] > 0) == edge).all()
    assert not E.outline_mask(np.zeros((28, 28))).any()


def decode(url, mode="RGB"):
    from PIL import Image
    import base64
    import io
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert(mode)).astype(int)


def test_a_sample_digit_gets_its_label_every_map_and_auc(explorer, samples):
    image = samples.images[0, :, :, 0] / 255.0
    reports = list(explorer.run(image))
    first, final = reports[0], reports[-1]
    # the first answer: the prediction with GradCAM and saliency, nothing slow yet
    r0 = first.models[0]
    assert r0.pred == samples.labels[0] and set(r0.maps) == {"gradcam", "saliency"} and not first.done
    assert {"integrated_gradients", "occlusion"} <= set(first.pending)  # medium and slow: later
    r = final.models[0]
    assert final.done and not final.pending and [rep.done for rep in reports].count(True) == 1
    assert set(r.maps) == set(r.aucs) == set(r.pictures) == set(SHOWN)
    assert r.targets == [r.pred] and abs(r.probs.sum() - 1) < 1e-4 and r.probs.argmax() == r.pred
    for method in SHOWN:
        assert r.maps[method].shape == (1, 28, 28) and np.isfinite(r.maps[method]).all()
        assert 0 <= r.aucs[method][0] <= 1
        assert r.pictures[method][0].startswith("data:image/png;base64,")
    # the maps are the project's own: the same as calling the explainer directly
    ref = X.make_explainer("gradcam", explorer.models[0].model).attribute(
        explorer.models[0].params, explorer.models[0].batch_stats, image[None, :, :, None])
    np.testing.assert_allclose(r.maps["gradcam"], ref, rtol=1e-5, atol=1e-6)
    # and the AUCs are evaluate_xai's: deletion of the probability as shown, softmax(logits / T)
    m = explorer.models[0]
    assert m.temperature and abs(m.temperature - 1) > 0.1  # the shipped checkpoint stores T = 1.57
    auc = M.deletion_insertion(m.model, m.params, m.batch_stats, image[None, :, :, None], r.maps["gradcam"],
                               [r.pred], steps=E.DELETION_STEPS, temperature=m.temperature)["deletion_auc"]
    np.testing.assert_allclose(r.aucs["gradcam"], auc, rtol=1e-4)


def test_target_choice_gives_two_rows_that_differ(explorer, samples):
    image = samples.images[0, :, :, 0] / 255.0  # a 7
    r = list(explorer.run(image, chosen=1))[-1].models[0]
    assert r.targets == [7, 1]
    for method in SHOWN:
        assert r.maps[method].shape == (2, 28, 28) and r.aucs[method].shape == (2,)
    assert not np.allclose(r.maps["gradcam"][0], r.maps["gradcam"][1])
    assert r.pictures["saliency"][0] != r.pictures["saliency"][1]
    # the chosen class being the prediction: one row
    assert list(explorer.run(image, chosen=7))[-1].models[0].targets == [7]
    with pytest.raises(ValueError, match="chosen"):
        next(explorer.run(image, chosen=10))


def test_two_models_side_by_side_same_digit(explorer, samples):
    import jax
    from mnist_cnn_model import initialize_model

    a = explorer.models[0]
    params, batch_stats, _ = initialize_model(jax.random.PRNGKey(1), a.model)  # untrained, same architecture
    b = E.LoadedModel("untrained", a.model, params, batch_stats, "random weights")
    two = E.Explorer([a, b], methods=("gradcam", "saliency", "gradient_x_input"))
    image = samples.images[3, :, :, 0] / 255.0
    final = list(two.run(image, chosen=5))[-1]
    ra, rb = final.models
    assert (ra.name, rb.name) == (a.name, "untrained")
    assert set(ra.maps) == set(rb.maps) == {"gradcam", "saliency", "gradient_x_input"}
    assert ra.pred == samples.labels[3]
    assert not np.allclose(ra.probs, rb.probs)
    assert not np.allclose(ra.maps["saliency"][0], rb.maps["saliency"][0])
    # one explainer per architecture and method serves both models
    assert E.explainer_for(a.model, "gradcam") is E.explainer_for(b.model, "gradcam")


@pytest.mark.parametrize("strokes, digit", [(VERTICAL, 1), (LOOP, 0)])
def test_drawings_are_read(app, strokes, digit):
    outs, (inp, status, model_html, state) = last(app.on_canvas(canvas(strokes), "none"))
    assert 'data-kind="done"' in status and f'data-pred="{digit}"' in model_html
    assert state["image"].shape == (28, 28) and state["where"] == "your drawing"
    assert 'id="xe-model-input"' in inp
    for method in SHOWN:
        assert f'data-method="{method}"' in model_html
    assert model_html.count('class="xe-px"') == len(SHOWN) and "deletion AUC" in model_html
    assert len(outs) == len(E.stages(SUBSET)) + 1  # the first answer, then one update per stage
    assert "--xe-outline: url(data:image/png;base64," in model_html  # the input's outline, once a panel


def menu_values(app, **named):
    """The page's dropdown values in ``app.menu`` order: ``method__option=value``, else default."""
    return [named.get(f"{m}__{o.name}", str(o.default)) for m, o in app.menu]


def test_settings_rerun_the_current_digit(app):
    _, (_, _, _, state) = last(app.on_canvas(canvas(VERTICAL)))
    _, (_, status, html_two, state2) = last(app.on_settings(state, "7", None,
                                                            *menu_values(app, integrated_gradients__steps="16")))
    assert 'data-kind="done"' in status and "why 1 and not 7" in html_two
    assert html_two.count('class="xe-px"') == 2 * len(SHOWN) and 'data-target="7"' in html_two
    assert state2["image"] is state["image"]
    # a setting off the menu, a class out of range, or no digit yet: a message, not an error
    _, (_, status, _, _) = last(app.on_settings(state, "7", None, *menu_values(app, integrated_gradients__steps="17")))
    assert "Bad setting" in status and "steps" in status and "Integrated Gradients" in status
    _, (_, status, _, _) = last(app.on_settings(state, "12"))
    assert "Bad setting: class: expected none or 0-9, got &#x27;12&#x27;" in status
    _, (_, status, _, _) = last(app.on_settings(None, "3"))
    assert "Draw a digit first" in status


def test_family_chooser_shows_only_those_families(app):
    _, (_, _, _, state) = last(app.on_canvas(canvas(VERTICAL)))
    _, (_, status, page, _) = last(app.on_settings(state, "none", ["path", "propagation"]))
    assert 'data-kind="done"' in status and "2 methods" in status
    assert re.findall(r'data-method="(\w+)"', page) == ["integrated_gradients", "guided_backprop"]
    assert re.findall(r'data-family="(\w+)"', page) == ["path", "propagation"]
    _, (_, status, _, _) = last(app.on_settings(state, "none", ["nosuch"]))
    assert "Bad setting: families: expected some of cam, gradient, path, perturbation, propagation" in status


def test_a_newer_request_of_the_same_tab_stops_the_older(app):
    old = app.on_canvas(canvas(VERTICAL), session="tab")
    first = next(old)  # the older drawing's first answer is out; its slower maps are not
    assert 'data-pred="1"' in first[2] and 'data-kind="busy"' in first[1]
    _, (_, status, page, _) = last(app.on_canvas(canvas(LOOP), session="tab"))
    assert 'data-pred="0"' in page and 'data-kind="done"' in status
    assert list(old) == []  # superseded: nothing more from it, so it cannot overwrite the newer answer
    # another tab's request does not stop this one
    mine = app.on_canvas(canvas(VERTICAL), session="a")
    next(mine)
    last(app.on_canvas(canvas(LOOP), session="b"))
    assert 'data-kind="done"' in list(mine)[-1][1]


def test_picking_a_sample_explains_that_exact_digit(app, samples):
    value = app.on_pick(12)
    assert value.startswith("sample:12|data:image/png;base64,")
    _, (inp, status, model_html, state) = last(app.on_canvas(value))
    np.testing.assert_array_equal(state["image"], samples.images[12, :, :, 0] / np.float32(255))
    assert f"#12 (labelled {samples.labels[12]})" in inp
    assert f'data-pred="{samples.labels[12]}"' in model_html
    assert app.on_pick(10_000) == "" and app.on_pick(None) == ""


@pytest.mark.parametrize("value, words", [
    ("", "canvas is empty"),
    (None, "canvas is empty"),
    ("data:image/png;base64,AAAA", "the canvas image is not a picture that can be read"),
    ("not a data url", "the canvas image is not a picture"),
    ("sample:999|data:", "unknown sample"),
    ("file:3:x.png|data:image/png;base64,aGVsbG8K", "x.png is not a picture that can be read"),
    ("file:3:a%7Cb.png|nonsense", "a|b.png is not a picture"),
    ("toolarge:4:big.png:21000000", "big.png is 21.0 MB: pictures up to 20 MB are read"),
])
def test_bad_canvas_values_give_a_message(app, value, words, capfd):
    outs, (inp, status, model_html, state) = last(app.on_canvas(value))
    assert words in status and 'data-kind="warn"' in status and state is None
    assert "Traceback" not in "".join(map(str, outs)) and "<img" not in model_html
    assert capfd.readouterr().err == ""


def test_empty_canvas_png_gives_a_message(app):
    _, (_, status, _, _) = last(app.on_canvas(canvas([])))
    assert "Nothing to explain" in status and "no ink" in status


def test_tiny_dot_and_scribble_are_explained_with_a_note(app):
    _, (inp, status, model_html, _) = last(app.on_canvas(canvas([[(100, 100), (102, 101)]], width=6)))
    assert 'data-kind="done"' in status and "tiny drawing" in inp and "data-pred=" in model_html
    scribble = [[(0, y), (280, y)] for y in range(0, 281, 10)]
    _, (inp, status, model_html, _) = last(app.on_canvas(canvas(scribble, width=8)))
    assert 'data-kind="done"' in status and "ink covers" in inp
    _, (inp, status, model_html, _) = last(app.on_canvas(canvas(scribble, width=30)))  # painted all over
    assert "Nothing to explain" in status and "flat tone" in status


def test_pictures_of_any_size_and_polarity(app):
    im = Image.new("RGB", (4000, 3000), "white")  # a huge photo-like image, black ink on white
    ImageDraw.Draw(im).line([(2000, 600), (2000, 2400)], fill="black", width=200)
    _, (inp, status, model_html, _) = last(app.on_upload(np.asarray(im.convert("RGBA"))))
    assert 'data-kind="done"' in status and 'data-pred="1"' in model_html and "the picture" in inp
    assert list(app.on_upload(None)) == []
    _, (_, status, _, _) = last(app.on_upload(np.zeros((4, 4, 2))))
    assert "cannot be read as a digit" in status


def test_a_file_that_is_not_a_picture_or_too_large_is_one_line_and_clears_the_result(app, tmp_path, capfd):
    _, (_, _, before, _) = last(app.on_canvas(canvas(VERTICAL)))
    assert 'data-pred="1"' in before
    text = tmp_path / "x.png"
    text.write_text("this is not a picture\n" * 20)
    outs, (inp, status, page, state) = last(app.on_upload(str(text)))
    assert len(outs) == 1 and 'data-kind="warn"' in status and state is None
    assert "x.png is not a picture that can be read (PNG, JPEG" in status and "\n" not in status
    assert "data-pred" not in page and "<img" not in page and "<img" not in inp  # the 1's maps are gone
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(E.MAX_UPLOAD_BYTES + 1_000_000)
    _, (_, status, page, state) = last(app.on_upload(str(big)))
    assert "big.png is 21.0 MB: pictures up to 20 MB are read" in status and state is None and "<img" not in page
    # a data URL past the limit is refused before it is decoded
    _, (_, status, _, _) = last(app.on_canvas("file:1:huge.png|data:image/png;base64," + "A" * E.MAX_UPLOAD_CHARS))
    assert "huge.png is too large" in status
    # a real picture file is read
    im = Image.new("L", (90, 90), 255)
    ImageDraw.Draw(im).line([(45, 10), (45, 80)], fill=0, width=9)
    im.save(tmp_path / "one.jpg")
    _, (inp, status, page, _) = last(app.on_upload(str(tmp_path / "one.jpg")))
    assert 'data-pred="1"' in page and "one.jpg" in inp
    err = capfd.readouterr().err
    assert err == "", err


def fashion_model(explorer):
    m = explorer.models[0]
    return E.LoadedModel("fashion", m.model, m.params, m.batch_stats, "stub", FASHION, None, "fashion_mnist")


def test_another_datasets_checkpoint_offers_its_own_samples_or_says_none_are_shipped(explorer, tmp_path):
    import gradio as gr

    none = E.load_samples("fashion_mnist", folder=tmp_path)
    assert none.split is None and none.note.startswith("No Fashion-MNIST sample images are shipped")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "fashion_mnist_test_sample.npz", images=rng.integers(0, 255, (6, 28, 28, 1), np.uint8),
             labels=np.arange(6))
    some = E.load_samples("fashion_mnist", folder=tmp_path)
    assert len(some.split.labels) == 6 and "Fashion-MNIST" in some.credit and "Zalando" in some.credit
    assert E.load_samples("mnist").split is not None

    fx = E.Explorer([fashion_model(explorer)], methods=("gradcam", "saliency"))
    app = E.App(fx, none)
    assert app.noun == "garment" and app.samples is None
    _, (_, status, _, _) = last(app.on_canvas(""))
    assert "draw a garment" in status and "digit" not in status
    _, (_, status, _, _) = last(app.on_canvas(canvas([])))
    assert "draw a garment" in status and "digit" not in status
    blocks, _ = E.build_app(app)
    galleries = [c for c in blocks.blocks.values() if isinstance(c, gr.Gallery)]
    texts = " ".join(str(getattr(c, "value", "")) for c in blocks.blocks.values() if isinstance(c, (gr.Markdown, gr.HTML)))
    assert galleries == [] and "No Fashion-MNIST sample images are shipped" in texts
    assert "Draw a garment" in texts and "digit" not in texts.split("How to read it")[0]

    app = E.App(fx, some)
    blocks, _ = E.build_app(app)
    (gallery,) = [c for c in blocks.blocks.values() if isinstance(c, gr.Gallery)]
    assert [item["caption"] for item in gallery.value] == list(FASHION[:6])
    _, (inp, _, page, _) = last(app.on_canvas(app.on_pick(2)))
    assert "Fashion-MNIST test image #2 (labelled 2)" in inp and "Pullover" in page


@pytest.mark.parametrize("dataset, first_labels", [("fashion_mnist", [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]),
                                                   ("kmnist", [2, 9, 3, 8, 3, 3, 8, 3, 2, 5])])
def test_fashion_and_kmnist_checkpoints_are_offered_their_own_shipped_test_images(dataset, first_labels):
    """The first 20 of each class of the official test set (the official sets' first labels are
    known), credited with their licence, and not MNIST's digits."""
    shipped = E.load_samples(dataset)
    split = shipped.split
    assert split is not None, shipped.note
    assert split.images.shape[0] == 200 and np.bincount(split.labels, minlength=10).tolist() == [20] * 10
    d = np.load(E.sample_path(dataset))
    assert d["labels"][:10].tolist() == first_labels and d["test_indices"][:10].tolist() == list(range(10))
    assert ("MIT" if dataset == "fashion_mnist" else "CC BY-SA 4.0") in shipped.credit
    mnist = np.load(E.sample_path("mnist"))["images"]
    assert not any((d["images"][i] == mnist).all(axis=(1, 2, 3)).any() for i in range(10))


def test_warm_up_takes_the_whole_path_and_the_background_yields_to_requests(explorer, monkeypatch):
    calls = []
    for name in ("interpret", "render_model", "render_input"):
        real = getattr(E, name)
        monkeypatch.setattr(E, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    app = E.App(explorer)
    app.warm_up(stages=1)
    assert calls.count("interpret") == 1 and calls.count("render_input") == 2 and calls.count("render_model") >= 4
    # the background warm-up waits while a request is in flight
    progressed = []
    monkeypatch.setattr(explorer, "_row", lambda *a, _real=explorer._row: progressed.append(1) or _real(*a))
    with explorer._idle:
        explorer._busy += 1
    t = threading.Thread(target=explorer.warm_up, kwargs=dict(stages=1, background=True))
    t.start()
    t.join(1.0)
    assert t.is_alive() and progressed == []
    with explorer._idle:
        explorer._busy -= 1
        explorer._idle.notify_all()
    t.join(120)
    assert not t.is_alive() and progressed


def test_an_unexpected_error_is_one_line_in_the_page_and_on_stderr(app, monkeypatch, capfd):
    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")
        yield
    monkeypatch.setattr(app.explorer, "run", broken)
    _, (_, status, _, _) = last(app.on_canvas(canvas(VERTICAL)))
    assert "Something went wrong: boom" in status and "second line" not in status
    err = capfd.readouterr().err
    assert err.strip() == "explore_mnist_xai: error: RuntimeError: boom" and "Traceback" not in err


def test_two_tabs_at_once_get_their_own_results(app):
    results = {}

    def tab(name, strokes):
        results[name] = last(app.on_canvas(canvas(strokes)))[1]

    threads = [threading.Thread(target=tab, args=("one", VERTICAL)), threading.Thread(target=tab, args=("zero", LOOP))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert 'data-pred="1"' in results["one"][2] and 'data-pred="0"' in results["zero"][2]
    assert results["one"][3]["image"] is not results["zero"][3]["image"]


def test_the_tabs_warm_up_request_changes_nothing(app):
    (inp, status, page, state), = list(app.on_canvas("warm:123", "none", None, session="w"))
    assert 'data-warm="1"' in status and "Draw a digit to start." in status and state is None
    assert "<img" not in inp and "data-pred" not in page


def test_a_late_warm_up_copy_neither_stops_nor_blanks_a_drawing(app):
    """The page re-sends its warm-up until answered, so on a busy machine a copy can reach the
    server after the first stroke (CI saw the page blanked, status and maps, so)."""
    stroke = app.on_canvas(canvas(VERTICAL), session="late")
    first = next(stroke)
    assert list(app.on_canvas("warm:1", session="late")) == []  # no answer: the page keeps the drawing's
    rest = list(stroke)
    assert rest and 'data-kind="done"' in rest[-1][1] and 'data-pred="1"' in rest[-1][2], first[1]


def test_a_request_superseded_before_its_first_answer_leaves_the_page_alone(app):
    """Gradio sends None to every output of a handler that yields nothing, which blanks the
    status, the input and the maps: the page's handler answers 'no change' instead."""
    import gradio as gr
    blocks, _ = E.build_app(app)
    (dep,) = [d for d in blocks.fns.values() if d.api_name == "explain"]

    class Tab:
        session_hash = "superseded"

    n_settings = len(dep.inputs) - 1
    list(dep.fn(canvas(VERTICAL), "none", None, *[None] * (n_settings - 2), Tab()))
    answers = list(dep.fn("warm:1", "none", None, *[None] * (n_settings - 2), Tab()))
    assert answers == [tuple(gr.skip() for _ in dep.outputs)]


def test_render_placeholders_before_any_drawing(app):
    inp, status, model_html, state = app.placeholders("hello")
    assert "hello" in status and "Draw to see the prediction" in model_html and state is None and "<img" not in inp


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "explore_mnist_xai.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("make", ["missing", "empty", "garbage"])
def test_missing_or_broken_checkpoint_is_one_line_and_exit_2(tmp_path, make):
    path = tmp_path / "ckpt"
    if make == "empty":
        path.mkdir()
    elif make == "garbage":
        (path / "ckpt" / "3" / "state").mkdir(parents=True)
        (path / "ckpt" / "3" / "meta").mkdir()
        (path / "ckpt" / "3" / "state" / "junk").write_text("not a checkpoint")
    p = run_cli("--checkpoint", str(path), "--port", "1")
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("error: ") and str(path.name) in p.stderr


def test_command_line_errors_are_one_line(tmp_path):
    p = run_cli("--port", "70000")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--port" in p.stderr
    p = run_cli("--checkpoint", "a", "--checkpoint", "b", "--checkpoint", "c")
    assert p.returncode == 2 and "one or two" in p.stderr
    p = run_cli("--methods", "gradcam,nosuch")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--methods" in p.stderr, p.stderr
    p = run_cli("--help")
    assert p.returncode == 0 and "--checkpoint" in p.stdout and "127.0.0.1" in p.stdout
