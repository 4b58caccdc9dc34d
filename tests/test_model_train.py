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
from mnist_data import MNIST, Split

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
    assert meta["epoch"] == 2 and meta["model"] == MNISTCNN().config()
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
    resumed = T.train_and_evaluate(_cfg(), tmp_path, synthetic, resume=True, progress=False,
                                   log=lambda *_: None)
    assert _params_equal(resumed["state"]["params"], uninterrupted["state"]["params"])
    assert _params_equal(resumed["state"]["batch_stats"], uninterrupted["state"]["batch_stats"])


def test_different_seed_different_params(trained, synthetic, tmp_path):
    _, first = trained
    other = T.train_and_evaluate(_cfg(epochs=1, seed=1), tmp_path, synthetic, progress=False,
                                 log=lambda *_: None)
    assert not _params_equal(other["state"]["params"], first["state"]["params"])


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
        b = one
        for k in path:
            b = b[k.key]
        # Running means track the conv output, bias included: that noise, damped by momentum.
        # Elsewhere Adam turns a near-zero gradient's rounding into a visible step now and
        # then (1 weight in 18,432 off by 1.7e-5 seen here), so a few may stray; a wrong
        # batch or key would move them all, and the losses above.
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() < 1e-4, name
        if not name.endswith("['mean']"):
            close = np.isclose(a, b, rtol=1e-4, atol=1e-6)
            assert close.mean() > 0.999, (name, close.mean())


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
    (["--evaluate"], "--evaluate needs --checkpoint"),
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
    for flag in ("--data-dir", "--workdir", "--epochs", "--batch-size", "--learning-rate", "--seed",
                 "--resume", "--max-train-examples", "--evaluate", "--checkpoint"):
        assert flag in proc.stdout


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
