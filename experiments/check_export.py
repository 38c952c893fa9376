#!/usr/bin/env python3
"""Load `fedolf export`'s safetensors of the paper's CNN into an independent numpy forward
pass (PyTorch's layouts: conv [out, in, kh, kw], linear [out, in], NCHW flatten) and print
its test accuracy on Fashion-MNIST, to compare with the run's own `final_accuracy`.
Needs numpy and safetensors. Usage:
  check_export.py MODEL.safetensors TRAIN_LIMIT TEST_LIMIT [DATA_DIR]"""
import gzip
import sys

import numpy as np
from safetensors.numpy import load_file


def idx(path):
    raw = open(path, "rb").read()
    b = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def conv_unit(x, w, b):
    """conv 5×5, padding 2 → ReLU → max-pool 2 (the CNN's ConvUnit)."""
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # [n, c, h, w, k, k]
    y = np.einsum("nchwij,ocij->nohw", cols, w, optimize=True) + b[None, :, None, None]
    y = np.maximum(y, 0)
    return y.reshape(n, o, h // 2, 2, wd // 2, 2).max(axis=(3, 5))


def main(model, train_limit, test_limit, root="/usr/share/datasets/fashion-mnist/"):
    ext = ".gz"
    train = idx(f"{root}/train-images-idx3-ubyte{ext}")[: int(train_limit) or None].astype(np.float32) / 255
    test = idx(f"{root}/t10k-images-idx3-ubyte{ext}")[: int(test_limit) or None].astype(np.float32) / 255
    labels = idx(f"{root}/t10k-labels-idx1-ubyte{ext}")[: int(test_limit) or None]
    x = ((test - train.mean()) / train.std())[:, None]  # per-channel statistics of the training split
    w = load_file(model)
    h = conv_unit(x, w["layers.0.conv.weight"], w["layers.0.conv.bias"])
    h = conv_unit(h, w["layers.1.conv.weight"], w["layers.1.conv.bias"])
    logits = h.reshape(len(h), -1) @ w["layers.2.linear.weight"].T + w["layers.2.linear.bias"]
    print(f"accuracy of the exported model: {(logits.argmax(1) == labels).mean():.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
