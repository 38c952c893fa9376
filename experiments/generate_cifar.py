#!/usr/bin/env python3
"""Write CIFAR-10 / CIFAR-100 files in the real on-disk formats, with generated images.

For memory and speed experiments where the real download is not at hand, and for the readers'
tests: the readers see exactly the files the downloads unpack to, the binary version
(`cifar-10-batches-bin/`, `cifar-100-binary/`) and the python version torchvision downloads
(`cifar-10-batches-py/`, `cifar-100-python/`: dicts pickled with protocol 2, pixels as a numpy
uint8 array of shape [N, 3072], byte-string keys as Python 2 wrote them). `--format both`
writes the same images and labels in both. The python version needs numpy. The images are
class-dependent colour patterns plus noise (learnable, but not CIFAR): accuracy on them says
nothing about CIFAR.

    python3 experiments/generate_cifar.py --kind cifar100 --train 5000 --test 1000 OUT_DIR
"""
import argparse
import os
import random


def image(label, classes, rng):
    # A per-class base colour per channel and quadrant, plus uniform noise.
    base = [[(37 * (label + 1) * (c + 3) * (q + 5)) % 256 for q in range(4)] for c in range(3)]
    out = bytearray(3072)
    for c in range(3):
        for y in range(32):
            for x in range(32):
                q = (y // 16) * 2 + x // 16
                out[c * 1024 + y * 32 + x] = max(0, min(255, base[c][q] + rng.randint(-60, 60)))
    return bytes(out)


def records(n, kind, rng):
    classes = 10 if kind == "cifar10" else 100
    out = []
    for _ in range(n):
        label = rng.randrange(classes)
        out.append((label, image(label, classes, rng)))
    return out


def write_binary(path, recs, kind):
    with open(path, "wb") as f:
        for label, pixels in recs:
            head = bytes([label]) if kind == "cifar10" else bytes([label // 5, label])
            f.write(head + pixels)


def write_python(path, recs, kind, batch_label):
    import pickle

    import numpy as np

    data = np.frombuffer(b"".join(p for _, p in recs), dtype=np.uint8).reshape(len(recs), 3072)
    labels = [label for label, _ in recs]
    names = [b"generated_%06d.png" % i for i in range(len(recs))]
    if kind == "cifar10":
        d = {b"batch_label": batch_label, b"labels": labels, b"data": data, b"filenames": names}
    else:
        d = {b"filenames": names, b"batch_label": batch_label, b"fine_labels": labels, b"coarse_labels": [l // 5 for l in labels], b"data": data}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--kind", choices=["cifar10", "cifar100"], default="cifar100")
    ap.add_argument("--format", choices=["binary", "python", "both"], default="binary")
    ap.add_argument("--train", type=int, default=5000, help="training images (CIFAR-10: split over 5 files)")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    if a.kind == "cifar10":
        per = a.train // 5
        files = [(f"data_batch_{i}", records(per, a.kind, rng), b"training batch %d of 5" % i) for i in range(1, 6)]
        files.append(("test_batch", records(a.test, a.kind, rng), b"testing batch 1 of 1"))
        folders = {"binary": "cifar-10-batches-bin", "python": "cifar-10-batches-py"}
    else:
        files = [("train", records(a.train, a.kind, rng), b"training batch 1 of 1"), ("test", records(a.test, a.kind, rng), b"testing batch 1 of 1")]
        folders = {"binary": "cifar-100-binary", "python": "cifar-100-python"}
    for fmt in ["binary", "python"] if a.format == "both" else [a.format]:
        d = os.path.join(a.out, folders[fmt])
        os.makedirs(d, exist_ok=True)
        for name, recs, batch_label in files:
            if fmt == "binary":
                write_binary(os.path.join(d, name + ".bin"), recs, a.kind)
            else:
                write_python(os.path.join(d, name), recs, a.kind, batch_label)
        print(f"wrote {d} ({a.train} train / {a.test} test, generated images in the {a.kind} {fmt} format)")


if __name__ == "__main__":
    main()
