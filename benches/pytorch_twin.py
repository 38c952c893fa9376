#!/usr/bin/env python3
"""PyTorch twin of fedolf's models and local training — a benchmark-only reference.

`fedolf bench speed` and `fedolf bench conv` run this script next to their own measurements so
that the speed ratios they print come from the same machine, the same run and the same work,
each call taken beside fedolf's. It is never a dependency of the Rust project: nothing in
fedolf imports it, trains with it or checks results against it; if PyTorch is missing the
bench simply skips the comparison.
It needs only PyTorch (CPU) and the standard library.

"Same work" means:
- the same models, layer for layer (fedolf-models, default options): the same convolutions
  (channels, kernel sizes, padding, strides, bias flags), BatchNorm placement, pooling,
  ResNet option A shortcuts (parameter-free stride-2 subsampling + zero-padded channels) and
  classifiers, grouped into the same freezing units as Rust's `LayeredNet.layers`, so
  `frozen = l` freezes exactly the same first l units (parameter counts are checked by the
  `params` mode: CNN 1x28x28/10 classes 83,466; ResNet20 / ResNet44 3x32x32/10 classes
  269,722 / 658,586 trainable parameters);
- the same local training (src/local/training.rs): the frozen prefix runs without autograd and with
  BatchNorm on its running statistics (not updated); the rest trains in train mode;
  cross-entropy loss; SGD (momentum without dampening, L2 weight decay) over the trained
  parameters only, one optimizer per client per round; per epoch a reshuffle and mini-batches
  of `batch` (the last one partial) gathered by index from the data set's tensors;
  optionally (`cache_frozen`) the frozen prefix's outputs computed once per round and reused
  every epoch, as Rust's `train.cache_frozen`;
- the same server work: a per-client copy of the global model, layer-wise weighted averaging
  by sample count over the clients that trained each layer (BN running statistics too), and
  evaluation (logits, argmax hits, cross-entropy) on the scheduled rounds.
Data are random tensors of the real shapes, generated before any timed region; parameter
initialisation is PyTorch's default (it does not matter for timing). PyTorch's one-off
start-up costs (first optimizer, first step) are paid in an untimed warm-up.

Modes (each reads one JSON spec on stdin and prints one JSON object on stdout; `serve` then
keeps answering):
  round   replay of a federated experiment's workload, round by round
            {"model": "cnn", "input": [1, 28, 28], "classes": 10, "batch": 32, "epochs": 2,
             "sgd": {...}, "cache_frozen": false,
             "rounds": [{"clients": [{"samples": 272, "frozen": 1}, ...]}, ...],
             "eval": {"samples": 10000, "batch": 500, "rounds": [5, 10]}}
          -> {"torch": ..., "threads": N, "round_seconds": [...], "eval_seconds": [...],
              "total_seconds": s}
  serve   one timed call at a time, on request, so that fedolf's calls and these can
          alternate one by one (`fedolf bench speed` and `fedolf bench conv`): the first line
          on stdin is the spec, either full SGD steps
            {"sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
             "steps": [{"model": "cnn", "input": [1, 28, 28], "classes": 10, "batch": 16,
                        "frozen": 0}, ...]}
          or convolutions, each with its forward, input gradient and weight gradient
          (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight)
            {"convs": [{"batch": 128, "input": [16, 32, 32], "weight": [16, 16, 3, 3],
                        "stride": 1, "padding": 1}, ...]}
          every entry is built, then
          -> {"torch": ..., "threads": N, "ready": number of entries}
          and each further line {"step": i, "untimed": k} (or {"conv": i, "op": 0 | 1 | 2,
          "untimed": k}) makes k untimed calls of that entry, then one timed call
          -> {"seconds": s}
          until stdin closes.
  params  self-check of the model definitions
            {"model": "resnet20", "input": [3, 32, 32], "classes": 10}
          -> {"trainable": n, "buffers": m, "layers": [...], "layer_trainable": [...]}
"""

import argparse
import copy
import json
import sys
import time
import warnings

# PyTorch warns on import when NumPy is absent; this script never uses NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Models: each is a LayeredNet, an nn.ModuleList of freezing units in Rust's order.
# ---------------------------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """conv (stride 1, explicit padding) -> (BN) -> ReLU -> (max-pool p, stride p).
    Rust: models/src/conv_unit.rs (bias unless BN)."""

    kind = "conv"

    def __init__(self, c_in, c_out, kernel, padding, batch_norm, pool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=1, padding=padding, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(c_out) if batch_norm else None
        self.pool = pool

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = F.relu(x)
        if self.pool is not None:
            x = F.max_pool2d(x, self.pool, self.pool)
        return x


class DenseUnit(nn.Module):
    """flatten -> linear (with bias) -> optional ReLU. Rust: models/src/dense_unit.rs."""

    kind = "dense"

    def __init__(self, d_in, d_out, relu):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.relu = relu

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return F.relu(x) if self.relu else x


def conv3x3(c_in, c_out, stride):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PaddedSkip(nn.Module):
    """Option A shortcut (models/src/padded_skip.rs): subsample by the stride, then append
    zero channels up to c_out. No parameters."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        b, c, h, w = x.shape
        if c == self.c_out:
            return x
        zeros = x.new_zeros((b, self.c_out - c, h, w))
        return torch.cat([x, zeros], 1)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + skip, ReLU.
    Rust: models/src/residual.rs (default option A; the skip transforms only where the block
    changes shape)."""

    kind = "residual-block"

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out, 1)
        self.bn2 = nn.BatchNorm2d(c_out)
        reshapes = stride != 1 or c_in != c_out
        self.skip = PaddedSkip(c_in, c_out, stride) if reshapes else None

    def forward(self, x):
        skip = self.skip(x) if self.skip is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + skip)


class StemUnit(nn.Module):
    """ResNet stem (conv3x3 -> BN -> ReLU) fused with residual block 1: one freezing unit."""

    kind = "stem+block"

    def __init__(self, c_in, width):
        super().__init__()
        self.conv = conv3x3(c_in, width, 1)
        self.bn = nn.BatchNorm2d(width)
        self.block = BasicBlock(width, width, 1)

    def forward(self, x):
        return self.block(F.relu(self.bn(self.conv(x))))


class PooledHead(nn.Module):
    """Global average pool -> flatten -> linear (with bias): the last ResNet unit."""

    kind = "pooled-classifier"

    def __init__(self, channels, classes):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LayeredNet(nn.Module):
    """An ordered list of freezing units, input side first (Rust: models/src/net.rs)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x.flatten(1)


def cnn(input_shape, classes):
    """The FedOLF paper's CNN (models/src/cnn.rs, cnn_hidden = 0), N = 3:
    conv5x5(32, pad 2)-ReLU-pool2 | conv5x5(64, pad 2)-ReLU-pool2 | linear(classes)."""
    c, h, w = input_shape
    flat = 64 * (h // 2 // 2) * (w // 2 // 2)
    return LayeredNet([
        ConvUnit(c, 32, 5, 2, False, 2),
        ConvUnit(32, 64, 5, 2, False, 2),
        DenseUnit(flat, classes, relu=False),
    ])


def alexnet(input_shape, classes):
    """CIFAR AlexNet (models/src/alexnet.rs), N = 7: five conv3x3 (pad 1, bias, no BN)
    64, 192, 384, 256, 256 with max-pool 2 after the 1st, 2nd and 5th; FC 512 + ReLU; FC classes."""
    c, h, w = input_shape
    layers, c_in = [], c
    for c_out, pool in zip([64, 192, 384, 256, 256], [2, 2, None, None, 2]):
        layers.append(ConvUnit(c_in, c_out, 3, 1, False, pool))
        c_in = c_out
    flat = 256 * (h // 2 // 2 // 2) * (w // 2 // 2 // 2)
    layers.append(DenseUnit(flat, 512, relu=True))
    layers.append(DenseUnit(512, classes, relu=False))
    return LayeredNet(layers)


def resnet(input_shape, classes, blocks_per_stage):
    """CIFAR ResNet 6n+2 (models/src/resnet.rs), option A, N = 3n + 1:
    stem+block1 | n-1 blocks of 16 | block 16->32 /2, n-1 blocks of 32 |
    block 32->64 /2, n-1 blocks of 64 | pooled classifier."""
    w1, w2, w3 = 16, 32, 64
    layers = [StemUnit(input_shape[0], w1)]
    layers += [BasicBlock(w1, w1, 1) for _ in range(1, blocks_per_stage)]
    for c_in, c_out in [(w1, w2), (w2, w3)]:
        layers.append(BasicBlock(c_in, c_out, 2))
        layers += [BasicBlock(c_out, c_out, 1) for _ in range(1, blocks_per_stage)]
    layers.append(PooledHead(w3, classes))
    return LayeredNet(layers)


MODELS = {
    "cnn": cnn,
    "alexnet": alexnet,
    "resnet20": lambda shape, classes: resnet(shape, classes, 3),
    "resnet44": lambda shape, classes: resnet(shape, classes, 7),
}


def build(model, input_shape, classes):
    if model not in MODELS:
        fail(f"unknown model {model!r} (expected one of {', '.join(MODELS)})")
    return MODELS[model](list(input_shape), classes)


# ---------------------------------------------------------------------------------------------
# Local training with a frozen prefix (Rust: src/local/training.rs, FedOLF's ordered freezing).
# ---------------------------------------------------------------------------------------------


class LocalModel:
    """A model with its first `frozen` units frozen: they run under no_grad with BatchNorm in
    eval mode (running statistics, left untouched); the rest train in train mode. The optimizer
    sees only the trained units' parameters."""

    def __init__(self, net, frozen, sgd):
        n = len(net.layers)
        if not 0 <= frozen < n:
            fail(f"frozen = {frozen} must be in [0, {n}) (at least one layer has to train)")
        self.net, self.frozen = net, frozen
        self.prefix, self.suffix = net.layers[:frozen], net.layers[frozen:]
        for layer in self.prefix:
            layer.eval()
            layer.requires_grad_(False)
        for layer in self.suffix:
            layer.train()
            layer.requires_grad_(True)
        self.optim = torch.optim.SGD(
            [p for layer in self.suffix for p in layer.parameters()],
            lr=sgd["lr"],
            momentum=sgd.get("momentum", 0.0),
            dampening=0.0,
            weight_decay=sgd.get("weight_decay", 0.0),
        )

    def prefix_forward(self, x):
        with torch.no_grad():
            for layer in self.prefix:
                x = layer(x)
        return x

    def step_from_prefix(self, h, y):
        """One SGD step from the frozen prefix's output; returns the detached loss."""
        for layer in self.suffix:
            h = layer(h)
        loss = F.cross_entropy(h.flatten(1), y)
        loss.backward()
        self.optim.step()
        self.optim.zero_grad()
        return loss.detach()

    def step(self, x, y):
        return self.step_from_prefix(self.prefix_forward(x), y)

    def trained_layers(self):
        """(layer index, tensors) of every trained unit: what the client uploads."""
        return [
            (i, {k: v.detach().clone() for k, v in self.net.layers[i].state_dict().items()})
            for i in range(self.frozen, len(self.net.layers))
        ]


def train_local(local, images, labels, indices, epochs, batch, cache_frozen):
    """`epochs` epochs of mini-batch SGD over the samples `indices` of (images, labels)."""
    n = len(indices)
    cache = None
    if cache_frozen and epochs > 1 and local.frozen > 0:
        # The prefix's outputs for every sample, in `indices` order (src/local/training.rs: prefix_cache).
        cache = torch.cat([local.prefix_forward(images.index_select(0, chunk)) for chunk in indices.split(batch)])
    for _ in range(epochs):
        order = torch.randperm(n)
        epoch_loss = None
        for positions in order.split(batch):
            samples = indices.index_select(0, positions)
            y = labels.index_select(0, samples)
            if cache is not None:
                loss = local.step_from_prefix(cache.index_select(0, positions), y)
            else:
                loss = local.step(images.index_select(0, samples), y)
            epoch_loss = loss if epoch_loss is None else epoch_loss + loss
        if epoch_loss is not None and not torch.isfinite(epoch_loss).item():
            print("warning: local training diverged", file=sys.stderr)


def aggregate_layerwise(global_net, uploads):
    """FedOLF's layer-wise rule: θ_l ← Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k over the clients
    that trained layer l; a layer nobody trained keeps its value. Integer buffers (PyTorch's
    BN batch counter, absent in Rust) are left alone."""
    with torch.no_grad():
        for l, layer in enumerate(global_net.layers):
            contributions = [(w, layers[l]) for w, layers in uploads if l in layers]
            if not contributions:
                continue
            total = float(sum(w for w, _ in contributions))
            state = layer.state_dict()
            for name, value in state.items():
                if not value.is_floating_point():
                    continue
                acc = None
                for w, tensors in contributions:
                    term = tensors[name] * (w / total)
                    acc = term if acc is None else acc + term
                value.copy_(acc)


def evaluate(net, images, labels, batch):
    """Accuracy and mean loss of `net` (eval mode, no_grad), summed on the device and read once
    (Rust: src/local/evaluate.rs)."""
    net.eval()
    n = images.shape[0]
    correct, loss_sum = None, None
    with torch.no_grad():
        for start in range(0, n, batch):
            x, y = images[start:start + batch], labels[start:start + batch]
            logits = net(x)
            hits = (logits.argmax(1) == y).sum()
            loss = F.cross_entropy(logits, y) * y.shape[0]
            correct = hits if correct is None else correct + hits
            loss_sum = loss if loss_sum is None else loss_sum + loss
    if correct is None:
        return 0.0, 0.0
    return correct.item() / n, loss_sum.item() / n


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def random_data(n, input_shape, classes):
    return torch.rand([n] + list(input_shape)), torch.randint(0, classes, (n,))


def mode_serve(spec):
    """Build every entry of the spec, then answer one request a line with one timed call."""
    if "convs" in spec:
        entries = [conv_calls(entry) for entry in spec["convs"]]

        def call_of(request):
            return entries[request["conv"]][request["op"]]
    else:
        entries = []
        for entry in spec["steps"]:
            net = build(entry["model"], entry["input"], entry["classes"])
            local = LocalModel(net, entry.get("frozen", 0), spec["sgd"])
            x, y = random_data(entry["batch"], entry["input"], entry["classes"])
            # read the loss, as Rust's timed step does
            entries.append(lambda local=local, x=x, y=y: local.step(x, y).item())

        def call_of(request):
            return entries[request["step"]]
    reply({"torch": torch.__version__, "threads": torch.get_num_threads(), "ready": len(entries)})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            call = call_of(request)
            untimed = int(request.get("untimed", 0))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            fail(f"serve: bad request {line.strip()!r}: {e}")
        for _ in range(untimed):
            call()
        start = time.perf_counter()
        call()
        reply({"seconds": time.perf_counter() - start})


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def mode_round(spec):
    input_shape, classes = spec["input"], spec["classes"]
    batch, epochs, sgd = spec["batch"], spec["epochs"], spec["sgd"]
    cache_frozen = bool(spec.get("cache_frozen", False))
    eval_spec = spec.get("eval") or {"samples": 0, "batch": 1, "rounds": []}
    eval_rounds = set(eval_spec.get("rounds", []))

    global_net = build(spec["model"], input_shape, classes)
    # All random data up front: one training pool (the largest client's size) from which each
    # client takes a fixed random subset, gathered by index like Rust's ClientData.
    pool = max((c["samples"] for r in spec["rounds"] for c in r["clients"]), default=0)
    images, labels = random_data(pool, input_shape, classes)
    client_indices = [
        [torch.randperm(pool)[: c["samples"]] for c in r["clients"]] for r in spec["rounds"]
    ]
    eval_images, eval_labels = random_data(eval_spec.get("samples", 0), input_shape, classes)

    # Untimed warm-up on a throwaway copy: PyTorch's first optimizer construction and first
    # step pay one-off costs (lazy imports, ~2 s on CPU) that are not round work.
    if pool > 0:
        warm = LocalModel(copy.deepcopy(global_net), 0, sgd)
        warm.step(images[:batch], labels[:batch])
        del warm

    round_seconds, eval_seconds = [], []
    for number, (rnd, indices) in enumerate(zip(spec["rounds"], client_indices), start=1):
        start = time.perf_counter()
        uploads = []
        for client, idx in zip(rnd["clients"], indices):
            local = LocalModel(copy.deepcopy(global_net), client.get("frozen", 0), sgd)
            train_local(local, images, labels, idx, epochs, batch, cache_frozen)
            uploads.append((client["samples"], dict(local.trained_layers())))
            del local
        aggregate_layerwise(global_net, uploads)
        del uploads
        spent_eval = 0.0
        if number in eval_rounds and eval_images.shape[0] > 0:
            eval_start = time.perf_counter()
            evaluate(global_net, eval_images, eval_labels, eval_spec["batch"])
            spent_eval = time.perf_counter() - eval_start
        round_seconds.append(time.perf_counter() - start)
        eval_seconds.append(spent_eval)
    return {
        "round_seconds": round_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": sum(round_seconds),
    }


def conv_calls(entry):
    """One convolution's [forward, input gradient, weight gradient] on random tensors, each a
    call without autograd."""
    batch, (c_in, h, w) = entry["batch"], entry["input"]
    stride, padding = entry["stride"], entry["padding"]
    x = torch.rand(batch, c_in, h, w) * 2 - 1
    weight = torch.rand(*entry["weight"]) * 2 - 1
    with torch.no_grad():
        dy = torch.rand_like(F.conv2d(x, weight, stride=stride, padding=padding)) * 2 - 1

    def no_grad(fn):
        def call():
            with torch.no_grad():
                fn()
        return call

    return [
        no_grad(lambda: F.conv2d(x, weight, stride=stride, padding=padding)),
        no_grad(lambda: torch.nn.grad.conv2d_input(x.shape, weight, dy, stride=stride, padding=padding)),
        no_grad(lambda: torch.nn.grad.conv2d_weight(x, weight.shape, dy, stride=stride, padding=padding)),
    ]


def mode_params(spec):
    net = build(spec["model"], spec["input"], spec["classes"])
    trainable = [sum(p.numel() for p in layer.parameters()) for layer in net.layers]
    buffers = sum(b.numel() for b in net.buffers() if b.is_floating_point())
    return {
        "model": spec["model"],
        "trainable": sum(trainable),
        "buffers": buffers,
        "layers": [layer.kind for layer in net.layers],
        "layer_trainable": trainable,
    }


def fail(message):
    print(f"pytorch_twin: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["round", "params", "serve"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (inter-op: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    torch.manual_seed(args.seed)
    if args.mode == "serve":
        try:
            spec = json.loads(sys.stdin.readline())
        except json.JSONDecodeError as e:
            fail(f"bad JSON spec on the first line of stdin: {e}")
        mode_serve(spec)
        return
    try:
        spec = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        fail(f"bad JSON spec on stdin: {e}")
    result = {"round": mode_round, "params": mode_params}[args.mode](spec)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    out.update(result)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
