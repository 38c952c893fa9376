"""The ServerApp: learn which node holds which partition, build the fedolf run, and let
Flower's strategy loop drive it. Results go where `fedolf run` puts them (rounds.csv,
clients.csv, summary.json, config.toml), plus flower.json (the initial accuracy and the
node of each client)."""

from __future__ import annotations

import json
import os
import time
from logging import INFO
from pathlib import Path

import tomli
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

import fedolf

from .records import to_record
from .strategy import FedolfStrategy

app = ServerApp()
APP_ROOT = Path(__file__).resolve().parent.parent


def discover_nodes(grid: Grid, timeout: float) -> dict:
    """Ask every connected node for its `partition-id` / `num-partitions` (the server
    cannot read a node's config), waiting until all `num-partitions` nodes have answered."""
    deadline = time.time() + timeout
    partitions: dict = {}
    expected = None
    while time.time() < deadline:
        nodes = [n for n in grid.get_node_ids() if n not in partitions.values()]
        if nodes:
            queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
            for reply in grid.send_and_receive(queries, timeout=max(1.0, deadline - time.time())):
                if reply.has_error():
                    raise RuntimeError(f"node {reply.metadata.src_node_id} could not say its partition: {reply.error.reason}")
                info = reply.content["node"]
                pid, count = int(info["partition-id"]), int(info["num-partitions"])
                if expected is not None and count != expected:
                    raise RuntimeError(f"node {reply.metadata.src_node_id} says num-partitions = {count}, another said {expected}")
                if pid in partitions:
                    raise RuntimeError(f"nodes {partitions[pid]} and {reply.metadata.src_node_id} both say partition-id = {pid}")
                expected = count
                partitions[pid] = reply.metadata.src_node_id
        if expected is not None and len(partitions) == expected:
            return partitions
        time.sleep(1.0)
    raise RuntimeError(f"after {timeout:.0f} s, nodes for partitions {sorted(partitions)} of {expected} have connected")


def configured(config_toml: str, overrides: list, table: str, key: str):
    """A config value as the run will see it: the last override of `table.key`, else the file's."""
    for override in reversed(overrides):
        name, _, value = override.partition("=")
        if name.strip() == f"{table}.{key}":
            return tomli.loads(f"v = {value.strip()}")["v"]
    return tomli.loads(config_toml).get(table, {}).get(key)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    config_path = Path(str(rc["config"]))
    if not config_path.is_absolute():
        config_path = APP_ROOT / config_path
    config_toml = config_path.read_text()
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    out_dir = str(rc.get("out-dir", "")) or os.path.join("runs", time.strftime("flower-%Y%m%d-%H%M%S"))

    started = time.time()
    node_of_client = discover_nodes(grid, float(rc.get("node-timeout", 120)))
    nodes = len(node_of_client)
    overrides.append(f"federation.clients={nodes}")
    per_round = configured(config_toml, overrides, "federation", "clients_per_round")
    if per_round is not None and int(per_round) > nodes:
        log(INFO, "fedolf: %s clients per round configured, %d nodes: every node trains each round", per_round, nodes)
        overrides.append(f"federation.clients_per_round={nodes}")
    server = fedolf.Server(config_toml, out_dir, overrides)
    log(INFO, "fedolf: %s on %s, %d nodes, results in %s", server.method, server.dataset_source, len(node_of_client), out_dir)

    strategy = FedolfStrategy(server, node_of_client, float(rc.get("round-timeout", 600)))
    strategy.start(
        grid=grid,
        initial_arrays=to_record(server.global_weights()),
        num_rounds=server.rounds,
        timeout=float(rc.get("round-timeout", 600)),
        evaluate_fn=strategy.evaluate,
    )
    summary = json.loads(server.write_summary(time.time() - started))
    with open(os.path.join(out_dir, "flower.json"), "w") as f:
        json.dump({"initial_accuracy": strategy.initial[0] if strategy.initial else None, "node_of_client": {str(k): v for k, v in node_of_client.items()}, "summary": summary}, f, indent=2)
    log(INFO, "final accuracy: %s", summary["final_accuracy"])
