"""Build fashion_mnist_test_sample.npz and kmnist_test_sample.npz from the official test files.

    python sample_data/make_other_samples.py fashion DIR OUT.npz         # DIR holds t10k-*-ubyte.gz
    python sample_data/make_other_samples.py kmnist IMGS.npz LABELS.npz OUT.npz

The rule is mnist_test_sample.npz's: the first 20 of each class, in test-set order. The files
are checked against the official checksums first (see README.md here for where they came from).
"""
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mnist_data import IMAGE_MAGIC, LABEL_MAGIC, read_idx  # noqa: E402  (the project's IDX reader)

# sha256 of the official files: tensorflow-datasets url_checksums/fashion_mnist.tsv; for KMNIST's
# npz files, the md5s of the official files (Mila's mirror) turned into these sha256s.
FASHION = {"t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
           "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"}
FASHION_MTIME = "f3e9a759"  # the official .gz files' header timestamp
KMNIST = {"imgs": "692d824896bec8f3c357ebf7a0fe904ed67ac632ce953d0b58f7fbef7bb27d87",
          "labels": "660f13a4705431ea2a6391c41ecbe384cd0d932c595a101ec4f3b8989e785046"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def official_gz(path: str, name: str, magic: int) -> np.ndarray:
    """The IDX array of ``path``, checked to be the official .gz, or one whose only change is its
    10-byte header (Debian's): with the official header put back, the same bytes."""
    data = open(path, "rb").read()
    if sha256(data) != FASHION[name]:
        data = bytes.fromhex("1f8b0808" + FASHION_MTIME + "0003") + name.encode() + b"\0" + data[10:]
    if sha256(data) != FASHION[name]:
        sys.exit(f"{path}: not the official {name}.gz (sha256 {sha256(data)})")
    return read_idx(path, magic)  # the header is not part of the data


def save(out: str, images: np.ndarray, labels: np.ndarray) -> None:
    assert images.shape == (10000, 28, 28) and np.all(np.bincount(labels, minlength=10) == 1000)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[:20] for k in range(10)]))
    np.savez_compressed(out, images=images[keep][..., None].astype(np.uint8),
                        labels=labels[keep].astype(np.int32), test_indices=keep.astype(np.int32))
    print(f"wrote {out}: {len(keep)} images, test positions {keep.min()}..{keep.max()}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fashion"] and len(sys.argv) == 4:
        folder, out = sys.argv[2:]
        images = official_gz(f"{folder}/t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", IMAGE_MAGIC)
        labels = official_gz(f"{folder}/t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", LABEL_MAGIC)
        save(out, images, labels)
    elif sys.argv[1:2] == ["kmnist"] and len(sys.argv) == 5:
        imgs, lbls, out = sys.argv[2:]
        for path, kind in ((imgs, "imgs"), (lbls, "labels")):
            if sha256(open(path, "rb").read()) != KMNIST[kind]:
                sys.exit(f"{path}: not the official kmnist-test-{kind}.npz")
        save(out, np.load(imgs)["arr_0"], np.load(lbls)["arr_0"])
    else:
        sys.exit(__doc__)
