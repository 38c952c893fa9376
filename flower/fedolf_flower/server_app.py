"""The ServerApp: learn which node holds which partition (and its device and memory),
build the fedolf run, and drive its rounds over Flower. Results go where `fedolf run` puts
them (rounds.csv, clients.csv, summary.json, config.toml, checkpoint/), plus flower.json (the
initial accuracy and each client's node, device and declared memory).

Run config: `config`, `set`, `out-dir`, `node-timeout`, `round-timeout` (see
pyproject.toml), and `resume = RUN_DIR`: continue the run in that folder after its
checkpoint (written by this app or by `fedolf run`), with its own config.toml."""

from __future__ import annotations

import json
import os
import time
from logging import INFO, WARNING
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
    """Ask every connected node who it is (the server cannot read a node's config): its
    `partition-id`, `num-partitions`, `device` and optional `memory-mb`, waiting until all
    `num-partitions` nodes have answered. Returns `{partition: {"node", "device", "memory-mb"}}`."""
    deadline = time.time() + timeout
    partitions: dict = {}
    expected = None
    while time.time() < deadline:
        known = {p["node"] for p in partitions.values()}
        nodes = [n for n in grid.get_node_ids() if n not in known]
        if nodes:
            queries = [Message(RecordDict({"config": ConfigRecord({"what": "node"})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
            for reply in grid.send_and_receive(queries, timeout=max(1.0, deadline - time.time())):
                if reply.has_error():
                    raise RuntimeError(f"node {reply.metadata.src_node_id} could not say who it is: {reply.error.reason}")
                info = reply.content["node"]
                pid, count = int(info["partition-id"]), int(info["num-partitions"])
                if expected is not None and count != expected:
                    raise RuntimeError(f"node {reply.metadata.src_node_id} says num-partitions = {count}, another said {expected}")
                if pid in partitions:
                    raise RuntimeError(f"nodes {partitions[pid]['node']} and {reply.metadata.src_node_id} both say partition-id = {pid}")
                expected = count
                memory = float(info["memory-mb"]) if "memory-mb" in info else None
                partitions[pid] = {"node": reply.metadata.src_node_id, "device": str(info.get("device", "cpu")), "memory-mb": memory}
        if expected is not None and len(partitions) == expected:
            return partitions
        time.sleep(1.0)
    raise RuntimeError(f"after {timeout:.0f} s, nodes for partitions {sorted(partitions)} of {expected} have connected")


def declare_memory(grid: Grid, server, nodes: dict, timeout: float) -> None:
    """Memory budgets: every node with `memory-mb` measures the peak predictor's calibration
    on its own device; the server plans it from that and its budget."""
    declaring = {pid: n for pid, n in nodes.items() if n["memory-mb"] is not None}
    if not declaring:
        return
    if server.capacity != "memory":
        log(WARNING, "fedolf: nodes %s declare memory-mb, but the run plans by clusters (federation.capacity = \"%s\"); their budgets are not used", sorted(declaring), server.capacity)
        return
    config = ConfigRecord({"what": "calibration", "run-config": server.config_toml()})
    queries = [Message(RecordDict({"config": config}), dst_node_id=n["node"], message_type=MessageType.QUERY) for n in declaring.values()]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(queries, timeout=timeout)}
    for pid, n in sorted(declaring.items()):
        reply = replies.get(n["node"])
        if reply is None or reply.has_error():
            reason = "no reply" if reply is None else reply.error.reason
            raise RuntimeError(f"node {n['node']} (client {pid}) declared memory-mb = {n['memory-mb']} but did not calibrate: {reason}")
        server.declare_memory(pid, n["memory-mb"], str(reply.content["calibration"]["calibration"]))
        log(INFO, "fedolf: client %d (node %s, %s) declares %.1f MB and its own calibration", pid, n["node"], n["device"], n["memory-mb"])


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
    resume = str(rc.get("resume", ""))
    if resume:
        # A stopped run goes on with its own config, in its own folder.
        config_path = Path(resume) / "config.toml"
        if not config_path.is_file():
            raise RuntimeError(f"resume = {resume}: not a run folder ({config_path} is missing)")
        overrides: list = []
        out_dir = resume
    else:
        config_path = Path(str(rc["config"]))
        if not config_path.is_absolute():
            config_path = APP_ROOT / config_path
        overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
        out_dir = str(rc.get("out-dir", "")) or os.path.join("runs", time.strftime("flower-%Y%m%d-%H%M%S"))
    config_toml = config_path.read_text()
    round_timeout = float(rc.get("round-timeout", 600))

    started = time.time()
    nodes = discover_nodes(grid, float(rc.get("node-timeout", 120)))
    node_of_client = {pid: n["node"] for pid, n in nodes.items()}
    if resume:
        clients = configured(config_toml, [], "federation", "clients")
        if clients != len(nodes):
            raise RuntimeError(f"resume = {resume}: the run has federation.clients = {clients}, but {len(nodes)} nodes connected; start one node per client")
    else:
        overrides.append(f"federation.clients={len(nodes)}")
        per_round = configured(config_toml, overrides, "federation", "clients_per_round")
        if per_round is not None and int(per_round) > len(nodes):
            log(INFO, "fedolf: %s clients per round configured, %d nodes: every node trains each round", per_round, len(nodes))
            overrides.append(f"federation.clients_per_round={len(nodes)}")
        clusters = configured(config_toml, overrides, "federation", "clusters")
        if clusters is not None and int(clusters) > len(nodes):
            log(INFO, "fedolf: %s capacity clusters configured, %d nodes: %d clusters", clusters, len(nodes), len(nodes))
            overrides.append(f"federation.clusters={len(nodes)}")
    server = fedolf.Server(config_toml, out_dir, overrides, resume or None)
    devices = ", ".join(f"client {pid}: {n['device']}" for pid, n in sorted(nodes.items()))
    log(INFO, "fedolf: %s on %s, %d nodes (%s), results in %s", server.method, server.dataset_source, len(nodes), devices, out_dir)
    declare_memory(grid, server, nodes, round_timeout)

    strategy = FedolfStrategy(server, node_of_client, round_timeout)
    arrays = to_record(server.global_weights())
    if server.first_round == 1:
        log(INFO, "initial accuracy: %.2f %%", 100 * strategy.evaluate_initial(arrays)[0])
    else:
        log(INFO, "fedolf: resuming %s after round %d of %d", out_dir, server.first_round - 1, server.rounds)
    strategy.run(grid, arrays)
    summary = json.loads(server.write_summary(time.time() - started))
    flower_json = os.path.join(out_dir, "flower.json")
    initial = strategy.initial[0] if strategy.initial else None
    if initial is None and os.path.exists(flower_json):
        # A resumed run keeps the initial accuracy its first part measured.
        initial = json.load(open(flower_json)).get("initial_accuracy")
    with open(flower_json, "w") as f:
        json.dump(
            {
                "initial_accuracy": initial,
                "node_of_client": {str(k): v for k, v in node_of_client.items()},
                "nodes": {str(pid): n for pid, n in sorted(nodes.items())},
                "lost_nodes": sorted(strategy.lost),
                "resumed_after_round": server.first_round - 1 if resume else None,
                "summary": summary,
            },
            f,
            indent=2,
        )
    log(INFO, "final accuracy: %s", summary["final_accuracy"])
