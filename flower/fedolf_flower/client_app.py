"""The ClientApp: a node trains its partition with fedolf's Rust core, on its own device.

Node config (`flower-supernode --node-config "..."`; Flower's simulation sets the first two):
- `partition-id`, `num-partitions`: which client of the run this node is;
- `data-dir` (optional): the node's own data folder instead of its partition of the shared
  dataset;
- `device` (optional, default `cpu`): where its rounds train, `cpu`, `wgpu` or `cuda` (one
  compiled into the bindings: `fedolf.devices()`);
- `memory-mb` (optional): the memory this node can give a round. With
  `federation.capacity = "memory"` the node measures the peak predictor's calibration on its
  own device before round 1 and the server plans its rounds from that and this budget."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedolf

from .records import from_record, to_record

app = ClientApp()
# A node's data, loaded once per run config (a ClientApp process can serve many rounds).
_clients: dict = {}


def node_identity(context: Context) -> dict:
    """The node's config, checked: partition, data folder, device, memory."""
    cfg = context.node_config
    if "partition-id" not in cfg or "num-partitions" not in cfg:
        raise ValueError("node config needs partition-id and num-partitions (flower-supernode --node-config \"partition-id=0 num-partitions=3\")")
    device = str(cfg.get("device", "cpu"))
    if device not in fedolf.devices():
        raise ValueError(f"node config: device = '{device}', but these bindings train on {', '.join(fedolf.devices())} only (rebuild them with FEDOLF_WHEEL_FEATURES={device} flower/install.sh)")
    memory_mb = float(cfg["memory-mb"]) if "memory-mb" in cfg else None
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"node config: memory-mb = {cfg['memory-mb']}: a budget is a positive number of MB")
    return {
        "partition-id": int(cfg["partition-id"]),
        "num-partitions": int(cfg["num-partitions"]),
        "data-dir": str(cfg["data-dir"]) if "data-dir" in cfg else None,
        "device": device,
        "memory-mb": memory_mb,
    }


def client_for(node: dict, run_config: str) -> fedolf.Client:
    key = (run_config, node["partition-id"], node["num-partitions"], node["data-dir"], node["device"])
    if key not in _clients:
        _clients.clear()
        _clients[key] = fedolf.Client(run_config, node["partition-id"], node["num-partitions"], node["data-dir"], node["device"])
    return _clients[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
    """`what = "node"` (the default): who this node is. `what = "calibration"`: the peak
    predictor's calibration for the run config sent, measured on this node's device."""
    node = node_identity(context)
    config = msg.content["config"]
    if str(config.get("what", "node")) == "calibration":
        client = client_for(node, str(config["run-config"]))
        reply = ConfigRecord({"calibration": client.calibrate(), "device": client.device})
        return Message(RecordDict({"calibration": reply}), reply_to=msg)
    info = {k: node[k] for k in ("partition-id", "num-partitions", "device")}
    if node["memory-mb"] is not None:
        info["memory-mb"] = node["memory-mb"]
    return Message(RecordDict({"node": ConfigRecord(info)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = node_identity(context)
    pid = node["partition-id"]
    config = msg.content["config"]
    client = client_for(node, str(config["run-config"]))
    if int(config["client"]) != pid:
        raise ValueError(f"this node is partition {pid}, the server sent client {config['client']}'s round")
    payload = from_record(msg.content["payload"])
    stats = list(config["stats"])
    layers, record = client.train(int(config["round"]), str(config["plan"]), payload, list(zip(stats[0::2], stats[1::2])), int(config["bytes-down"]))
    content = RecordDict(
        {
            "upload": to_record(layers),
            "meta": ConfigRecord({"client": pid, "device": client.device, "record": json.dumps(record)}),
            "metrics": MetricRecord({"train_loss": float(record["train_loss"]), "num-examples": int(record["samples"])}),
        }
    )
    return Message(content, reply_to=msg)
