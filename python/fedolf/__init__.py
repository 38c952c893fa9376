"""fedolf's Rust core for Python: numpy in, numpy out.

A model travels as an ordered dict ``{key: ndarray}`` with keys ``"LLLL.PPP:name"`` (layer
index, position inside the layer, tensor name), so sorting the keys restores the order the
Rust side reads them in. Every function calls the code the ``fedolf`` simulator runs.

- ``init_weights(model, input_shape, classes, seed)``: a model's initial weights.
- ``ordered_plan(num_layers, frozen)``: FedOLF's plan for one client (JSON).
- ``toa_sparsify(model, input_shape, classes, prefix, s, seed, round, client)``: TOA.
- ``aggregate(global_weights, uploads)``: layer-wise (masked) weighted averaging.
- ``Server`` / ``Client``: a whole run's server side and a node's local rounds.
- ``devices()``: the devices these bindings can train on (``cpu``, ``wgpu``, ``cuda``).
"""

from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._core import FedolfError

Weights = Dict[str, np.ndarray]

__all__ = [
    "FedolfError",
    "Server",
    "Client",
    "init_weights",
    "ordered_plan",
    "toa_sparsify",
    "aggregate",
    "to_arrays",
    "from_arrays",
    "layer_of",
    "devices",
]


def devices() -> List[str]:
    """The devices compiled into these bindings (a node's ``device`` must be one of them)."""
    return list(_core.devices())


def to_arrays(wire: Iterable[Tuple[int, str, Sequence[int], bytes]]) -> Weights:
    """Rust's ``(layer, name, shape, bytes)`` tensors as ``{key: float32 ndarray}``."""
    out: Weights = {}
    position = {}
    for layer, name, shape, data in wire:
        p = position.get(layer, 0)
        position[layer] = p + 1
        out[f"{layer:04d}.{p:03d}:{name}"] = np.frombuffer(data, dtype="<f4").reshape(shape).copy()
    return out


def from_arrays(arrays: Weights) -> List[Tuple[int, str, List[int], bytes]]:
    """``{key: ndarray}`` back into Rust's tensors, in key order."""
    wire = []
    for key in sorted(arrays):
        head, _, name = key.partition(":")
        layer = int(head.split(".")[0])
        value = np.ascontiguousarray(arrays[key], dtype="<f4")
        wire.append((layer, name, list(value.shape), value.tobytes()))
    return wire


def layer_of(key: str) -> int:
    """The layer index a key belongs to."""
    return int(key.split(".", 1)[0])


def init_weights(model: str, input_shape: Tuple[int, int, int], classes: int, seed: int) -> Weights:
    return to_arrays(_core.init_weights(model, tuple(input_shape), classes, seed))


def ordered_plan(num_layers: int, frozen: int, client: int = 0, cluster: int = 0) -> str:
    return _core.ordered_plan(num_layers, frozen, client, cluster)


def toa_sparsify(model, input_shape, classes, prefix: Weights, s, seed, round, client, mode="paper"):
    """TOA on a frozen prefix; returns ``(sent weights, elements in full, elements sent)``."""
    sent, full, kept = _core.toa_sparsify(model, tuple(input_shape), classes, from_arrays(prefix), s, seed, round, client, mode)
    return to_arrays(sent), full, kept


def aggregate(global_weights: Weights, uploads: Sequence[Tuple[float, Weights, Optional[Weights]]]) -> Weights:
    """Layer-wise masked weighted averaging of ``(weight, trained layers, masks or None)``."""
    wire = [(w, from_arrays(v), None if m is None else from_arrays(m)) for w, v, m in uploads]
    return to_arrays(_core.aggregate(from_arrays(global_weights), wire))


class Server:
    """A run's server side (see ``fedolf._core.Server``), numpy in and out."""

    def __init__(self, config_toml: str, out_dir: Optional[str] = None, overrides: Sequence[str] = (), resume: Optional[str] = None):
        self._core = _core.Server(config_toml, out_dir, list(overrides), resume)

    def __getattr__(self, name):
        return getattr(self._core, name)

    def global_weights(self) -> Weights:
        return to_arrays(self._core.global_weights())

    def set_global(self, weights: Weights) -> None:
        self._core.set_global(from_arrays(weights))

    def plan_round(self, round: int, live: Optional[Sequence[int]] = None) -> List[Tuple[int, str]]:
        return self._core.plan_round(round, None if live is None else list(live))

    def download(self, client: int) -> Tuple[Weights, int, int]:
        tensors, bytes_down, frozen_bytes = self._core.download(client)
        return to_arrays(tensors), bytes_down, frozen_bytes

    def receive(self, client: int, layers: Weights, record_json: str) -> None:
        self._core.receive(client, from_arrays(layers), record_json)

    def finish_round(self, wall_s: float) -> dict:
        return json.loads(self._core.finish_round(wall_s))


class Client:
    """A node's local rounds (see ``fedolf._core.Client``), numpy in and out."""

    def __init__(self, config_toml: str, partition_id: int, num_partitions: int, data_dir: Optional[str] = None, device: Optional[str] = None):
        self._core = _core.Client(config_toml, partition_id, num_partitions, data_dir, device)

    @property
    def num_samples(self) -> int:
        return self._core.num_samples

    @property
    def device(self) -> str:
        return self._core.device

    def calibrate(self) -> str:
        """The peak predictor's calibration on this node's device (JSON, for ``Server.declare_memory``)."""
        return self._core.calibrate()

    def train(self, round: int, plan_json: str, payload: Weights, stats, bytes_down: int) -> Tuple[Weights, dict]:
        layers, record = self._core.train(round, plan_json, from_arrays(payload), [tuple(s) for s in stats], bytes_down)
        return to_arrays(layers), json.loads(record)
