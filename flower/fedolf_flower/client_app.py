"""The ClientApp: a node trains its partition with fedolf's Rust core.

Node config: `partition-id` and `num-partitions` (Flower's simulation sets both; a SuperNode
gets them with `--node-config`), optionally `data-dir` (the node's own data folder instead
of its partition of the shared dataset)."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedolf

from .records import from_record, to_record

app = ClientApp()
# A node's data, loaded once per run config (a ClientApp process can serve many rounds).
_clients: dict = {}


def node_identity(context: Context):
    cfg = context.node_config
    if "partition-id" not in cfg or "num-partitions" not in cfg:
        raise ValueError("node config needs partition-id and num-partitions (flower-supernode --node-config \"partition-id=0 num-partitions=3\")")
    data_dir = str(cfg["data-dir"]) if "data-dir" in cfg else None
    return int(cfg["partition-id"]), int(cfg["num-partitions"]), data_dir


@app.query()
def query(msg: Message, context: Context) -> Message:
    pid, count, _ = node_identity(context)
    return Message(RecordDict({"node": ConfigRecord({"partition-id": pid, "num-partitions": count})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid, count, data_dir = node_identity(context)
    config = msg.content["config"]
    run_config = str(config["run-config"])
    key = (run_config, pid, count, data_dir)
    if key not in _clients:
        _clients.clear()
        _clients[key] = fedolf.Client(run_config, pid, count, data_dir)
    client = _clients[key]
    if int(config["client"]) != pid:
        raise ValueError(f"this node is partition {pid}, the server sent client {config['client']}'s round")
    payload = from_record(msg.content["payload"])
    stats = list(config["stats"])
    layers, record = client.train(int(config["round"]), str(config["plan"]), payload, list(zip(stats[0::2], stats[1::2])), int(config["bytes-down"]))
    content = RecordDict(
        {
            "upload": to_record(layers),
            "meta": ConfigRecord({"client": pid, "record": json.dumps(record)}),
            "metrics": MetricRecord({"train_loss": float(record["train_loss"]), "num-examples": int(record["samples"])}),
        }
    )
    return Message(content, reply_to=msg)
