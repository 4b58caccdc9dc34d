"""``pip install .``: the checkout installs into a fresh venv and explains a model from another folder.

Offline and quick: the venv is made ``--without-pip`` and sees this interpreter's packages
(jax, flax, setuptools, pip; equinox where installed) through a .pth file — a venv's
``--system-site-packages`` would show the base Python's, not this venv's — and pip runs with
``--no-deps --no-build-isolation --no-index``: no download of the dependencies or of a
build backend; the build uses the setuptools already here. What the test proves is that the
package and its flat modules are all in the wheel and import from the installed copy.
The install is made from a copy of the files it needs, so that the build's ``build/`` and
``*.egg-info`` folders never land in the checkout.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

SNIPPET = r"""
import sys, jax, numpy as np
import mnist_xai, mnist_cnn_model, mnist_xai_visualizations
from pathlib import Path
venv = Path(sys.prefix).resolve()
for m in (mnist_xai, mnist_cnn_model, mnist_xai_visualizations):
    assert venv in Path(m.__file__).resolve().parents, (m.__name__, m.__file__)  # the installed copy
from mnist_cnn_model import initialize_model
from mnist_xai_visualizations import GradCAM
params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
image = np.random.default_rng(0).random((28, 28, 1)).astype(np.float32)
heatmap, pred, score = GradCAM(model).compute_gradcam(params, batch_stats, image)
assert heatmap.shape == (28, 28) and 0 <= pred < 10
from flax import nnx
class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv, self.head = nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.Linear(4, 3, rngs=rngs)
    def __call__(self, x):
        return self.head(nnx.relu(self.conv(x)).mean((1, 2)))
maps = mnist_xai.GradCAM(Net(nnx.Rngs(0)), layer="conv").attribute(None, None, image[None])
assert maps.shape == (1, 28, 28)
print("ok", pred)
"""


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            package, version = line.split("==")
            pins[package.lower()] = version
    return pins


def test_the_dependencies_are_the_requirements_pins():
    """Each dependency of pyproject.toml is ``~=`` the pin of its requirements file."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    for deps, name in [(PYPROJECT["project"]["dependencies"], "requirements.txt"),
                       (extras["tfds"], "requirements-tfds.txt"), (extras["explorer"], "requirements-explorer.txt")]:
        found = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)~=(.+)", d).groups() for d in deps)
        pins = _pins(name)  # its own pins (its -r includes are the runtime's)
        if name == "requirements-explorer.txt":
            pins.pop("playwright")  # only for its browser test: in [dev]
        assert {k.lower(): v for k, v in found.items()} == pins, name


def test_the_flat_modules_the_package_imports_are_installed():
    """Every top-level module that mnist_xai and the installed flat modules import from the
    checkout is itself installed."""
    installed = set(PYPROJECT["tool"]["setuptools"]["py-modules"])
    local = {p.stem for p in REPO.glob("*.py")}
    sources = [*REPO.joinpath("mnist_xai").rglob("*.py"), *(REPO / f"{m}.py" for m in installed)]
    imported = set()
    for path in sources:
        imported |= set(re.findall(r"^\s*(?:from|import) ([A-Za-z_]\w*)", path.read_text(), re.M))
    assert imported & local <= installed, sorted(imported & local - installed)


def test_pip_install_into_a_fresh_venv(tmp_path):
    pytest.importorskip("pip")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "mnist_xai", src / "mnist_xai", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["pyproject.toml", "README.md", *(f"{m}.py" for m in PYPROJECT["tool"]["setuptools"]["py-modules"])]:
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([python, "-c", SNIPPET], capture_output=True, text=True, cwd=elsewhere,
                         env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)}, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
