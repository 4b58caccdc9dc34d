"""explore_mnist_xai without a browser: the computation, the page's handlers, bad input, start-up errors.

One Explorer is built per module (each method compiles once per process); the browser test
(test_explorer_browser.py) runs the same programs when both run in one pytest session.
"""
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

SHOWN = E.methods_in_order()  # the methods the page shows (a choice of the registry's)

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
    return E.Explorer(E.load_models(None))


@pytest.fixture(scope="module")
def app(explorer, samples):
    return E.App(explorer, samples)


def last(gen):
    out = list(gen)
    assert out, "the handler yielded nothing"
    return out, out[-1]


def test_every_method_is_shown_and_staged():
    assert E.methods_in_order() == [*(m for st in E.STAGES for m in st), *E.MORE]
    assert E.stages()[0] == ("gradcam", "saliency")
    assert set(E.TITLES) >= set(E.methods_in_order())


def test_a_sample_digit_gets_its_label_every_map_and_auc(explorer, samples):
    image = samples.images[0, :, :, 0] / 255.0
    reports = list(explorer.run(image))
    first, final = reports[0], reports[-1]
    # the first answer: the prediction with GradCAM and saliency, nothing slow yet
    r0 = first.models[0]
    assert r0.pred == samples.labels[0] and set(r0.maps) == {"gradcam", "saliency"} and not first.done
    assert set(E.SLOW) <= set(first.pending)
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
    two = E.Explorer([a, b])
    image = samples.images[3, :, :, 0] / 255.0
    final = list(two.run(image, chosen=5))[-1]
    ra, rb = final.models
    assert (ra.name, rb.name) == (a.name, "untrained")
    assert set(ra.maps) == set(rb.maps) == set(SHOWN)
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
    assert model_html.count("<img") == len(SHOWN) and "deletion AUC" in model_html
    assert len(outs) == len(E.stages()) + 1  # the first answer, then one update per stage


def test_settings_rerun_the_current_digit(app):
    _, (_, _, _, state) = last(app.on_canvas(canvas(VERTICAL)))
    _, (_, status, html_two, state2) = last(app.on_settings(state, "7", "16"))  # IG with 16 steps
    assert 'data-kind="done"' in status and "why 1 and not 7" in html_two
    assert html_two.count("<img") == 2 * len(SHOWN) and 'data-target="7"' in html_two
    assert state2["image"] is state["image"]
    # a setting off the menu, or no digit yet: a message, not an error
    _, (_, status, _, _) = last(app.on_settings(state, "7", "17"))
    assert "Bad setting" in status and "ig_steps" in status
    _, (_, status, _, _) = last(app.on_settings(None, "3"))
    assert "Draw a digit first" in status


def test_options_parse():
    assert E.Options.parse() == E.Options()
    o = E.Options.parse("64", "50", "0.4", "8")
    assert (o.ig_steps, o.sg_samples, o.sg_noise, o.occlusion_patch) == (64, 50, 0.4, 8)
    assert o.for_method("occlusion") == {"patch": 8, "stride": 4}
    assert E.Options.parse(occlusion_patch="2").for_method("occlusion") == {"patch": 2, "stride": 2}
    for bad in (dict(ig_steps="2.5"), dict(sg_samples=7), dict(sg_noise="x"), dict(occlusion_patch=28)):
        with pytest.raises(ValueError):
            E.Options.parse(**bad)


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
    ("data:image/png;base64,AAAA", "could not be read"),
    ("not a data url", "not an image"),
    ("sample:999|data:", "unknown sample"),
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


def test_render_placeholders_before_any_drawing(app):
    inp, status, model_html, state = app.placeholders("hello")
    assert "hello" in status and "Draw a digit" in model_html and state is None and "<img" not in inp


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
    p = run_cli("--help")
    assert p.returncode == 0 and "--checkpoint" in p.stdout and "127.0.0.1" in p.stdout
