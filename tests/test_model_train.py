"""Model, training loop, checkpoints and the training CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_checkpoint as ckpt
import train_mnist as T
from mnist_cnn_model import (MNISTCNN, _xla_weight_grad, conv3x3, conv3x3_weight_grad, count_params,
                             initialize_model)
from mnist_data import MNIST, Split, pixel_stats

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- model


def test_exact_parameter_count_and_shapes():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    assert count_params(params) == 322_922
    assert count_params(batch_stats) == 2 * (32 + 32 + 64 + 64 + 128 + 128)
    variables = {"params": params, "batch_stats": batch_stats}
    x = jnp.zeros((3, 28, 28, 1))
    assert model.apply(variables, x).shape == (3, 10)
    fmap = model.apply(variables, x, method=MNISTCNN.features)
    assert fmap.shape == (3, 7, 7, 128)
    np.testing.assert_allclose(model.apply(variables, fmap, method=MNISTCNN.head),
                               model.apply(variables, x), rtol=1e-6)



def test_valid_conv_block_is_the_same_block_on_the_interior():
    """conv_block(padding="VALID") on a crop equals the SAME block's output inside the crop;
    features() is the blocks and pools of segments() in order."""
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    variables = {"params": params, "batch_stats": batch_stats}
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
    stem = model.apply(variables, x, method=MNISTCNN.stem)
    same = model.apply(variables, 0, stem, method=MNISTCNN.conv_block)
    valid = model.apply(variables, 0, stem[:, 4:16, 6:20], padding="VALID", method=MNISTCNN.conv_block)
    np.testing.assert_allclose(valid, same[:, 5:15, 7:19], rtol=1e-6, atol=1e-6)
    assert model.segments() == [((0, 1), True), ((2, 3), True), ((4, 5), False)]
    with pytest.raises(ValueError, match="expected 'SAME' or 'VALID', got 'FULL'"):
        model.apply(variables, 0, stem, padding="FULL", method=MNISTCNN.conv_block)


def test_inference_folds_batchnorm_into_the_conv_with_the_same_values():
    """At inference each block is conv(x, W*s) + (b - mean)*s + beta, s = gamma/sqrt(var + eps):
    the same as conv -> BatchNorm(running statistics) -> ReLU, with non-trivial statistics;
    training still normalises with the batch's statistics; VALID is refused in training."""
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32), params)
    batch_stats = {k: {"mean": rng.normal(size=v["mean"].shape).astype(np.float32),
                       "var": rng.uniform(0.2, 3.0, size=v["var"].shape).astype(np.float32)}
                   for k, v in batch_stats.items()}
    variables = {"params": params, "batch_stats": batch_stats}
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 28, 28, 1))
    p, bn, st = params["conv1"], params["bn1"], batch_stats["bn1"]
    expected = jax.nn.relu((_xla_conv(x, p["kernel"]) + p["bias"] - st["mean"]) / np.sqrt(st["var"] + 1e-5)
                           * bn["scale"] + bn["bias"])
    got = model.apply(variables, 0, x, method=MNISTCNN.conv_block)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    y = _xla_conv(x, p["kernel"]) + p["bias"]
    mu, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    trained, _ = model.apply(variables, 0, x, True, method=MNISTCNN.conv_block, mutable=["batch_stats"])
    np.testing.assert_allclose(trained, jax.nn.relu((y - mu) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="inference only"):
        model.apply(variables, 0, x, True, "VALID", method=MNISTCNN.conv_block, mutable=["batch_stats"])


def _xla_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(5, 14, 14, 6, 4), (3, 28, 28, 1, 8), (4, 7, 7, 16, 32)])
def test_conv3x3_values_and_gradients_match_xla_conv(shape):
    n, h, w_, c, o = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, h, w_, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, c, o)), jnp.float32)
    np.testing.assert_allclose(conv3x3(x, w), _xla_conv(x, w), rtol=1e-4, atol=1e-4)
    g_new = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv3x3(x, w))), (0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(_xla_conv(x, w))), (0, 1))(x, w)
    for a, b in zip(g_new, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv3x3_weight_grad_agrees_across_chunk_sizes():
    """One image per chunk, a few, and the whole batch give XLA's weight gradient."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 7, 7, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(6, 7, 7, 3)), jnp.float32)
    dw_ref = jax.vjp(lambda w_: _xla_conv(x, w_), w)[1](g)[0]
    for chunk_bytes in (1, 3 * 7 * 7 * 9 * 5 * 4, 1 << 30):
        np.testing.assert_allclose(conv3x3_weight_grad(x, g, chunk_bytes), dw_ref, rtol=1e-4, atol=1e-4)


def test_conv3x3_picks_its_weight_gradient_by_platform():
    """The im2col rule (a scan over chunks) is what a CPU compiles; the other backends get
    XLA's own weight gradient, which is the same function."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 7, 7, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(4, 7, 7, 3)), jnp.float32)
    np.testing.assert_allclose(_xla_weight_grad(x, g, w), conv3x3_weight_grad(x, g), rtol=1e-4, atol=1e-4)
    # d/dw of sum(conv(x, w) * g) is the weight gradient alone: on a CPU, im2col's matmul
    # and no convolution at all; XLA's rule would be a convolution.
    lowered = jax.jit(jax.grad(lambda w_, x_, g_: jnp.sum(conv3x3(x_, w_) * g_))).lower(w, x, g).as_text()
    assert "dot_general" in lowered and "convolution" not in lowered


def test_model_config_round_trip():
    model = MNISTCNN(dense_features=64, dropout_rate=0.25)
    assert MNISTCNN.from_config(json.loads(json.dumps(model.config()))) == model


# ----------------------------------------------------------------------------- training

def _synthetic(n_train=256, n_val=64, n_test=64, seed=0) -> MNIST:
    """A separable set: class c is a bright 6x6 square at one of ten fixed places, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 12 * (c // 5), 1 + 5 * (c % 5)
            images[i, r:r + 6, col:col + 6] = 255
        return Split(images, labels)

    return MNIST(make(n_train), make(n_val), make(n_test), "synthetic")


def _cfg(**kw):
    base = dict(epochs=2, batch_size=16, learning_rate=3e-3, augment=False, seed=0, steps_per_call=1)
    base.update(kw)
    return T.TrainConfig(**base)


def _params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic):
    workdir = tmp_path_factory.mktemp("run")
    result = T.train_and_evaluate(_cfg(), workdir, synthetic, progress=False, log=lambda *_: None)
    return workdir, result


def test_separable_set_trains_to_100_percent(trained):
    _, result = trained
    assert result["test_accuracy"] == 1.0
    assert result["history"][-1]["val_accuracy"] == 1.0


def test_checkpoint_reload_gives_identical_logits(trained, synthetic):
    workdir, result = trained
    params, batch_stats, model, meta = ckpt.load_checkpoint(workdir)
    mean, std = pixel_stats(synthetic.train)  # the model standardises by its training split's pixels
    assert meta["epoch"] == 2 and meta["model"] == MNISTCNN(input_mean=mean, input_std=std).config()
    x = synthetic.test.images[:16].astype(np.float32) / 255
    state = result["state"]
    expected = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, x)
    got = model.apply({"params": params, "batch_stats": batch_stats}, x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result["test_accuracy"] and len(metrics["history"]) == 2
    assert (workdir / "training_curves.png").stat().st_size > 10_000


def test_same_seed_same_params_and_resume_equals_uninterrupted(trained, synthetic, tmp_path):
    _, uninterrupted = trained
    # Same seed again, interrupted mid-epoch 2 (as Ctrl-C would), then resumed.
    with pytest.raises(KeyboardInterrupt):
        T.train_and_evaluate(_cfg(), tmp_path, synthetic, progress=False, log=lambda *_: None,
                             stop_after_steps=21)
    assert ckpt.make_manager(tmp_path, read_only=True).latest_step() == 21
    meta = json.loads((tmp_path / "ckpt" / "21" / "meta" / "metadata").read_text())
    assert meta["partial_epoch"]["epoch"] == 1 and meta["partial_epoch"]["steps"] == 5  # 16 steps an epoch
    resumed = T.train_and_evaluate(_cfg(), tmp_path, synthetic, resume=True, progress=False,
                                   log=lambda *_: None)
    assert _params_equal(resumed["state"]["params"], uninterrupted["state"]["params"])
    assert _params_equal(resumed["state"]["batch_stats"], uninterrupted["state"]["batch_stats"])
    # The interrupted epoch's loss and accuracy are over all its 16 steps, not the 11 after the resume.
    first, again = uninterrupted["history"], resumed["history"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert [h[key] for h in again] == pytest.approx([h[key] for h in first], rel=1e-9, abs=1e-12), key
    # Time goes on from the stored elapsed seconds; the epoch's seconds include the 5 steps before.
    assert again[1]["elapsed_seconds"] > meta["elapsed_seconds"] > again[0]["elapsed_seconds"]
    assert again[1]["epoch_seconds"] > meta["partial_epoch"]["seconds"]
    assert resumed["train_seconds"] > meta["elapsed_seconds"]
    assert json.loads((tmp_path / "metrics.json").read_text())["history"] == again


def test_a_run_stopped_after_an_epochs_last_step_resumes_at_its_validation(trained, synthetic, tmp_path):
    _, uninterrupted = trained
    with pytest.raises(KeyboardInterrupt):
        T.train_and_evaluate(_cfg(), tmp_path, synthetic, progress=False, log=lambda *_: None,
                             stop_after_steps=16)  # epoch 1 trained, not yet validated
    resumed = T.train_and_evaluate(_cfg(), tmp_path, synthetic, resume=True, progress=False,
                                   log=lambda *_: None)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0]["train_loss"] == pytest.approx(uninterrupted["history"][0]["train_loss"], rel=1e-9)
    assert _params_equal(resumed["state"]["params"], uninterrupted["state"]["params"])


def test_resume_without_a_checkpoint_is_refused(synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"--resume: --workdir .* holds no checkpoint to resume from"):
        T.train_and_evaluate(_cfg(), tmp_path / "new", synthetic, resume=True, progress=False, log=lambda *_: None)
    assert not (tmp_path / "new").exists()
    (tmp_path / "run" / "ckpt" / "16.orbax-checkpoint-tmp-1796159672").mkdir(parents=True)  # a killed first save
    for workdir in (tmp_path / "new", tmp_path / "run"):
        proc = _run("train_mnist.py", "--workdir", str(workdir), "--resume", "--data-dir", "/no/such/folder")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "holds no checkpoint to resume from" in lines[0] and "leave out --resume" in lines[0]
    assert not (tmp_path / "new").exists()


def test_the_best_checkpoint_survives_a_resume(tmp_path):
    """orbax's BestN knew the saved metrics only in memory: reopened (a resume), it ranked
    nothing and deleted the best step at the next save."""
    state = {"w": np.zeros(3, np.float32)}
    manager = ckpt.make_manager(tmp_path)
    for step, acc in ((1, 0.9), (2, 0.5)):
        ckpt.save(manager, step, state, {"val_accuracy": acc}, acc)
    manager.close()
    manager = ckpt.make_manager(tmp_path)  # as --resume opens it
    ckpt.save(manager, 3, state, {"val_accuracy": 0.4}, 0.4)
    manager.close()
    assert [p.name for p in ckpt.step_dirs(tmp_path / "ckpt")] == ["1", "3"]  # the best and the latest
    assert ckpt.resolve_checkpoint_dir(tmp_path).name == "1"
    assert not (tmp_path / "ckpt" / ckpt.SUPERSEDED_SUBDIR).exists()  # step 2: renamed there, then deleted


def test_different_seed_different_params(trained, synthetic, tmp_path):
    _, first = trained
    other = T.train_and_evaluate(_cfg(epochs=1, seed=1), tmp_path, synthetic, progress=False,
                                 log=lambda *_: None)
    assert not _params_equal(other["state"]["params"], first["state"]["params"])
    # A one-epoch run's curves: 1000 x 380 pixels, the test accuracy drawn in.
    import matplotlib.image as mpimg
    assert mpimg.imread(tmp_path / "training_curves.png").shape[:2] == (380, 1000)


def test_one_epoch_curves_show_the_test_accuracy_on_sensible_axes():
    history = [{"epoch": 1, "step": 429, "train_loss": 0.9, "train_accuracy": 0.81, "val_loss": 0.12,
                "val_accuracy": 0.968}]
    fig = T.curves_figure(history, test_accuracy=0.9712)
    loss_ax, acc_ax = fig.axes[:2]
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlim() == (0.5, 1.5)  # one column around epoch 1, not 0.96-1.04
        assert [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]
    test_lines = [line for line in acc_ax.get_lines() if line.get_label().startswith("test")]
    assert len(test_lines) == 1 and list(test_lines[0].get_ydata()) == [pytest.approx(97.12)]
    assert "97.12%" in acc_ax.get_title()
    low, high = acc_ax.get_ylim()
    assert low <= 81 and high >= 97.12 and high - low < 40  # the values, not 0-100 nor a sliver
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []  # drawn on a Figure of its own: pyplot holds nothing
    many = T.curves_figure([{**history[0], "epoch": e} for e in range(1, 16)])
    assert many.axes[0].get_xlim() == (0.5, 15.5)
    # The legend says how the training curves were measured.
    assert [line.get_label() for line in loss_ax.get_lines()][0] == "train (augmented)"
    smoothed = T.curves_figure(history, label_smoothing=0.1, augment=False)
    assert [line.get_label() for line in smoothed.axes[0].get_lines()][0] == "train (label smoothing 0.1)"
    assert [line.get_label() for line in smoothed.axes[1].get_lines()][0] == "train"


def test_steps_fused_in_a_scan_compute_what_one_step_a_call_does(synthetic):
    """The accelerator path (several steps a call, lax.scan) against the CPU path (one step
    a call), from the same state over the same three batches."""
    from jax.sharding import Mesh

    cfg = _cfg(augment=True)
    model = MNISTCNN()
    tx = T.make_optimizer(cfg, 16)
    chunk = T.make_train_chunk(model, tx, cfg, Mesh(np.array(jax.devices()), ("data",)))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))

    def fresh():  # the call donates its state
        v = jax.tree_util.tree_map(jnp.copy, variables)
        return {"params": v["params"], "batch_stats": v["batch_stats"], "opt_state": tx.init(v["params"]),
                "step": jnp.zeros((), jnp.int32)}

    images, labels = jnp.asarray(synthetic.train.images), jnp.asarray(synthetic.train.labels)
    batches = np.random.default_rng(0).permutation(48).reshape(3, 16)
    key = jax.random.PRNGKey(1)
    one, losses = fresh(), []
    for b in range(3):
        one, m = chunk(one, images, labels, batches[b:b + 1], key)
        losses.append(float(m["loss"][0]))
    fused, m = chunk(fresh(), images, labels, batches, key)
    np.testing.assert_allclose(np.asarray(m["loss"]), losses, rtol=1e-5)
    assert int(fused["step"]) == 3
    for path, a in jax.tree_util.tree_leaves_with_path({k: fused[k] for k in ("params", "batch_stats")}):
        name = jax.tree_util.keystr(path)
        if name.startswith("['params']['conv") and name.endswith("['bias']"):
            # A conv bias before BatchNorm has a gradient of exactly zero in exact arithmetic;
            # Adam scales its rounding noise (~1e-9) up to full-size steps, so it differs
            # between any two orderings of the same sums (and BatchNorm cancels it).
            continue
        b, start = one, variables
        for k in path:
            b, start = b[k.key], start[k.key]
        a, b, start = np.asarray(a), np.asarray(b), np.asarray(start)
        if name.endswith("['mean']"):
            # Running means track the conv output, bias included, so they carry that noise: the
            # biases agree at step 1 and may differ by up to 2 and 4 Adam steps (lr each) by
            # steps 2 and 3, so with momentum 0.9 a mean may move by 0.1 * 4 lr + 0.09 * 2 lr
            # = 0.58 lr (1.7e-3). Seen: 1e-4 with AVX-512, 1.66e-4 on an AVX2-only EPYC.
            assert np.abs(a - b).max() < 0.58 * cfg.learning_rate, (name, np.abs(a - b).max())
            continue
        # Elsewhere Adam moves every weight by about its learning rate whatever the gradient's
        # size, so a gradient whose rounding differs between the two programs moves its weight
        # differently: on AVX-512 (2-core EPYC) 1 weight in 18,432 strayed, by 1.7e-5; on an
        # AVX2-only EPYC (2026-12-04) the convolutions round differently in the two programs
        # and the weights differ by 0.5-1.4% of their movement at the median (the mean up to
        # 0.9%), a few by most of it. So the bound is on the mean gap, 5% of the three steps'
        # movement: a dropped, repeated or wrong step moves every weight by a third of it or
        # more, and a wrong batch or key moves the losses above as well.
        moved = np.abs(b - start).max()
        assert moved > 0 and np.abs(a - b).mean() < 0.05 * moved, (name, np.abs(a - b).mean() / moved)


@pytest.mark.parametrize("steps, expected", [(429, 13), (430, 10), (431, 32), (640, 32), (20, 20), (1, 1)])
def test_steps_per_call_divides_the_epoch_where_it_can(steps, expected):
    assert T.steps_per_call(steps) == expected


def test_resume_with_other_config_is_refused(trained, synthetic):
    workdir, _ = trained
    with pytest.raises(ValueError, match="different config"):
        T.train_and_evaluate(_cfg(learning_rate=1e-3), workdir, synthetic, resume=True, progress=False,
                             log=lambda *_: None)


def test_a_diverging_run_stops_before_saving_nan_weights(synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"training diverged in steps \d+-\d+ .*nothing saved from them"):
        T.train_and_evaluate(_cfg(learning_rate=float("inf")), tmp_path, synthetic, progress=False,
                             log=lambda *_: None)
    assert not list((tmp_path / "ckpt").glob("[0-9]*"))


def test_augmentation_is_identity_at_zero_strength():
    x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)), jnp.float32)
    cfg = T.TrainConfig(max_rotation_deg=0.0, max_scale=0.0, max_shift=0.0)
    np.testing.assert_allclose(T.random_affine(jax.random.PRNGKey(0), x, cfg), x, atol=1e-6)
    shifted = T.random_affine(jax.random.PRNGKey(0), x, T.TrainConfig())
    assert shifted.shape == x.shape and not np.allclose(shifted, x)


def test_checkpoint_that_does_not_fit_the_model(trained, tmp_path):
    workdir, _ = trained
    step_dir = ckpt.resolve_checkpoint_dir(workdir)
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    meta["model"]["dense_features"] = 128
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(step_dir, bad)
    (bad / "meta" / "metadata").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="do not fit the model: params/dense1/bias expected"):
        ckpt.load_checkpoint(bad)


# ----------------------------------------------------------------------------- CLI


def _run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "expected a positive integer, got 0"),
    (["--batch-size", "abc"], "invalid positive_int value"),
    (["--learning-rate", "-1"], "expected a positive finite number"),
    (["--learning-rate", "inf"], "expected a positive finite number, got inf"),
    (["--weight-decay", "nan"], "expected a finite number >= 0, got nan"),
    (["--seed", "-1"], "expected an integer in [0, 2**32), got -1"),
    (["--seed", str(2**70)], "expected an integer in [0, 2**32)"),
    (["--evaluate", "--resume"], "--resume is for training"),
    (["--label-smoothing", "1"], "expected a number in [0, 1), got 1"),
    (["--num-validation", "-3"], "expected an integer >= 0, got -3"),
    (["--tfds", "--data-dir", "/no/such/folder"], "--tfds and --data-dir are alternatives"),
    (["--data-dir", "/no/such/folder", "--epochs", "1"], "/no/such/folder: data folder does not exist"),
    (["--evaluate", "--checkpoint", "/no/such/ckpt"], "/no/such/ckpt: no checkpoint there"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, message, tmp_path):
    proc = _run("train_mnist.py", "--workdir", str(tmp_path), *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_cli_refuses_to_train_over_checkpoints_without_resume(tmp_path):
    (tmp_path / "ckpt" / "429").mkdir(parents=True)  # what a finished epoch leaves
    proc = _run("train_mnist.py", "--workdir", str(tmp_path), "--data-dir", "/no/such/folder")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "already holds checkpoints (steps 429): pass --resume" in proc.stderr.strip().splitlines()[-1]
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["429"]
    (tmp_path / "afile").write_text("x")
    proc = _run("train_mnist.py", "--workdir", str(tmp_path / "afile"), "--data-dir", "/no/such/folder")
    assert proc.returncode == 2 and "expected a folder, found a file" in proc.stderr
    proc = _run("train_mnist.py", "--workdir", str(tmp_path / "afile" / "run"), "--data-dir", "/no/such/folder")
    assert proc.returncode == 2 and "cannot write there (Not a directory)" in proc.stderr.strip().splitlines()[-1]


def test_export_never_replaces_a_training_run_or_other_files(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(ckpt.CheckpointError, match="holds a training run's checkpoints, not an export"):
        ckpt.export_for_inference(workdir, workdir, 0.5)
    assert ckpt.resolve_checkpoint_dir(workdir)  # still there
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"found other files in it \(notes.txt\)"):
        ckpt.export_for_inference(workdir, other, 0.5)
    exported = ckpt.export_for_inference(workdir, tmp_path / "export", 0.5)
    assert ckpt.export_for_inference(workdir, exported, 0.5) == exported  # a previous export is replaced
    assert json.loads((exported / "metrics.json").read_text())["test_accuracy"] == 0.5


def test_checkpoints_with_a_broken_config_or_nan_weights_are_refused(trained, tmp_path):
    import shutil
    workdir, _ = trained
    step_dir = ckpt.resolve_checkpoint_dir(workdir)
    for name, model_config in (("dtype", {"dtype": "foo"}), ("widths", {"widths": "abc"}), ("list", [1, 2])):
        bad = tmp_path / name
        shutil.copytree(step_dir, bad)
        meta = json.loads((bad / "meta" / "metadata").read_text())
        meta["model"] = model_config
        (bad / "meta" / "metadata").write_text(json.dumps(meta))
        with pytest.raises(ckpt.CheckpointError, match="model config"):
            ckpt.load_checkpoint(bad)
    params, batch_stats, model, meta = ckpt.load_checkpoint(workdir)
    params = jax.tree_util.tree_map(np.array, params)
    params["dense2"]["bias"][3] = np.nan
    manager = ckpt.make_manager(tmp_path / "nan")
    ckpt.save(manager, 1, {"params": params, "batch_stats": batch_stats}, meta, None)
    with pytest.raises(ckpt.CheckpointError, match=r"NaN/inf values \(params/dense2/bias; a diverged"):
        ckpt.load_checkpoint(tmp_path / "nan")


def test_cli_help():
    proc = _run("train_mnist.py", "--help")
    assert proc.returncode == 0
    for flag in ("--data-dir", "--tfds", "--workdir", "--epochs", "--batch-size", "--learning-rate", "--seed",
                 "--resume", "--max-train-examples", "--evaluate", "--checkpoint", "--export"):
        assert flag in proc.stdout
    assert "../" not in proc.stdout  # examples run from a clone


def test_training_flags_are_the_config_fields():
    """Each TrainConfig field is a flag with help text, its type and default, and parsing
    gives the config back: a field added there is on the command line too."""
    import dataclasses
    parser = T.build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(T.TrainConfig):
        action = by_dest[f.name]
        assert action.help and f.metadata["help"] in action.help, f.name
        if not isinstance(f.default, bool):
            assert action.default == f.default and action.type is f.metadata["type"], f.name
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    args = parser.parse_args(["--epochs", "3", "--label-smoothing", "0.2", "--no-augment", "--max-train-examples",
                              "10", "--max-shift", "0", "--eval-batch-size", "100", "--num-validation", "7"])
    assert T.config_from_args(args) == T.TrainConfig(epochs=3, label_smoothing=0.2, augment=False,
                                                     max_train_examples=10, max_shift=0.0, eval_batch_size=100,
                                                     num_validation=7)
    assert T.config_from_args(parser.parse_args([])) == T.TrainConfig()


def test_evaluate_takes_the_shipped_checkpoint_unless_told(trained, tmp_path):
    """--evaluate without --checkpoint: pretrained/, even with a training run in checkpoints/
    (the one rule); --checkpoint checkpoints takes the run. The line before the accuracy says which."""
    import shutil
    from mnist_data import write_idx
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    write_idx(data / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 8).astype(np.uint8))

    def evaluate(*args):
        proc = subprocess.run([sys.executable, str(ROOT / "train_mnist.py"), "--evaluate", "--data-dir", str(data),
                               *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-2:]

    workdir, _ = trained
    shutil.copytree(workdir, tmp_path / "checkpoints")
    line, last = evaluate()
    assert line == f"checkpoint: {ckpt.resolve_checkpoint_dir(ckpt.PRETRAINED_DIR)}" and last.startswith("test_accuracy:")
    line, last = evaluate("--checkpoint", "checkpoints")
    assert line == f"checkpoint: checkpoints/ckpt/{ckpt.resolve_checkpoint_dir(workdir).name}"


def test_a_run_killed_while_a_superseded_step_is_deleted_resumes_to_the_same_weights(tmp_path):
    """benchmarks/stress_kill.py once: a 3-epoch run is SIGKILLed while orbax removes a
    superseded step, resumed with --resume, and its best checkpoint must load with the
    weights of an uninterrupted run, bit for bit, with nothing half-deleted left."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stress_kill.py"), "--runs", "1",
                           "--kill-at", "delete", "--nth", "1", "--epochs", "3", "--train", "192", "--batch-size", "32",
                           "--keep", str(tmp_path), "--json", str(tmp_path / "result.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "result.json").read_text())
    assert result["kills"] == 1 and result["attempts"][0]["exit"] == -9 and result["attempts"][-1]["resume"]
    assert result["bitwise_equal"] and result["leftovers"] == [] and result["ok"]
    assert proc.stdout.strip().splitlines()[-1].startswith("stress_kill: 1 of 1 runs killed and resumed; 1 finished")


# ----------------------------------------------------------------------------- shipped checkpoint


def _real_data_dir():
    d = os.environ.get("MNIST_DATA_DIR")
    if not d or not Path(d, "t10k-images-idx3-ubyte.gz").exists() and not Path(d, "t10k-images-idx3-ubyte").exists():
        pytest.skip("MNIST_DATA_DIR is not set to a folder with the real MNIST files")
    return d


def test_shipped_checkpoint_scores_at_least_99_6_on_real_test_set():
    data_dir = _real_data_dir()
    from mnist_data import load_test_split
    params, batch_stats, model, meta = ckpt.load_checkpoint()  # pretrained/
    test = load_test_split(data_dir)
    assert len(test) == 10_000
    result = T.evaluate(model, params, batch_stats, test)
    assert result["accuracy"] >= 0.996
    shipped = json.loads((ckpt.PRETRAINED_DIR / "metrics.json").read_text())
    assert abs(shipped["test_accuracy"] - result["accuracy"]) < 1e-9


def test_cli_evaluate_prints_test_accuracy_last():
    data_dir = _real_data_dir()
    proc = _run("train_mnist.py", "--evaluate", "--checkpoint", "pretrained", "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("test_accuracy: ") and float(last.split()[1]) >= 0.996


def test_data_parallel_on_two_cpu_devices(trained, tmp_path):
    """The run sharded over 2 JAX CPU devices (batch split, BatchNorm statistics and gradients
    averaged across them) trains as well; dropout noise is drawn per device, so the parameters
    are not bitwise those of one device."""
    code = f"""
import sys, jax
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
import train_mnist as T, test_model_train as t
r = T.train_and_evaluate(t._cfg(), {str(tmp_path / 'run')!r}, t._synthetic(), progress=False, log=lambda *_: None)
print(len(r["devices"]), r["test_accuracy"])
"""
    proc = _run("-c", code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    devices, accuracy = proc.stdout.split()[-2:]
    assert devices == "2" and float(accuracy) == 1.0
