#!/usr/bin/env python3
"""Write CIFAR-10 / CIFAR-100 files in the real binary on-disk format, with generated images.

For memory and speed experiments where the real download is not at hand: the readers see
exactly the files `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz` unpack to. The
images are class-dependent colour patterns plus noise (learnable, but not CIFAR): accuracy
on them says nothing about CIFAR.

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


def write(path, n, kind, rng):
    classes = 10 if kind == "cifar10" else 100
    with open(path, "wb") as f:
        for i in range(n):
            label = rng.randrange(classes)
            head = bytes([label]) if kind == "cifar10" else bytes([label // 5, label])
            f.write(head + image(label, classes, rng))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--kind", choices=["cifar10", "cifar100"], default="cifar100")
    ap.add_argument("--train", type=int, default=5000, help="training images (CIFAR-10: split over 5 files)")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    if a.kind == "cifar10":
        d = os.path.join(a.out, "cifar-10-batches-bin")
        os.makedirs(d, exist_ok=True)
        per = a.train // 5
        for i in range(1, 6):
            write(os.path.join(d, f"data_batch_{i}.bin"), per, a.kind, rng)
        write(os.path.join(d, "test_batch.bin"), a.test, a.kind, rng)
    else:
        d = os.path.join(a.out, "cifar-100-binary")
        os.makedirs(d, exist_ok=True)
        write(os.path.join(d, "train.bin"), a.train, a.kind, rng)
        write(os.path.join(d, "test.bin"), a.test, a.kind, rng)
    print(f"wrote {d} ({a.train} train / {a.test} test, generated images in the {a.kind} binary format)")


if __name__ == "__main__":
    main()
