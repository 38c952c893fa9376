"""The fedolf run as a Flower Strategy.

Every decision is the Rust core's (`fedolf.Server`, the simulator's own federation code):
which clients a round samples, each one's capacity level and plan (layers frozen, width
kept), the download (frozen prefix TOA-sparsified, active layers in full), and the
layer-by-layer merge. This class maps clients to Flower nodes and plans to messages, and
keeps track of the nodes it has lost: a node that did not reply within the round timeout (or
that Flower reports unavailable) is named in the log and not sampled again in this run.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Dict, Iterable, List, Optional, Set, Tuple

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

import fedolf
from .records import from_record, to_record


class FedolfStrategy(Strategy):
    """Assigns each node its client's plan and merges its upload with fedolf's rule."""

    def __init__(self, server: fedolf.Server, node_of_client: Dict[int, int], round_timeout: float):
        self.server = server
        self.node_of_client = node_of_client
        self.round_timeout = round_timeout
        # The records of the rounds this strategy ran (`Server.finish_round`'s JSON).
        self.records: List[dict] = []
        self.initial: Optional[Tuple[float, float]] = None
        # Nodes that missed a round: left out of every later round of this run.
        self.lost: Set[int] = set()
        self._started = 0.0

    def summary(self) -> None:
        log(INFO, "\t├── fedolf method: %s, %d clients (one per node), %d layers", self.server.method, self.server.num_clients, self.server.num_layers)

    def run(self, grid: Grid, arrays: ArrayRecord) -> ArrayRecord:
        """Rounds `server.first_round`..`server.rounds` (a resumed run starts after its
        checkpoint): plan, send, wait up to the round timeout, merge what came back."""
        for server_round in range(self.server.first_round, self.server.rounds + 1):
            messages = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
            replies = grid.send_and_receive(messages, timeout=self.round_timeout) if messages else []
            merged, _ = self.aggregate_train(server_round, replies)
            if merged is not None:
                arrays = merged
        return arrays

    def live_clients(self, grid: Optional[Grid]) -> Optional[List[int]]:
        """Clients whose node Flower lists as connected and that has not been lost (`None`
        without a grid to ask: every client)."""
        if grid is None:
            return None
        connected = set(grid.get_node_ids())
        return sorted(c for c, node in self.node_of_client.items() if node in connected and node not in self.lost)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._started = time.time()
        # The ArrayRecord Flower carries is the global model; the server plans from it.
        self.server.set_global(from_record(arrays))
        stats = [x for pair in self.server.stats() for x in pair]
        live = self.live_clients(grid)
        if live is not None and len(live) < len(self.node_of_client):
            gone = sorted(set(self.node_of_client) - set(live))
            log(INFO, "round %d: sampling among the %d live nodes (clients %s are gone)", server_round, len(live), gone)
        messages = []
        for client, plan in self.server.plan_round(server_round, live):
            payload, bytes_down, frozen_bytes = self.server.download(client)
            content = RecordDict(
                {
                    "payload": to_record(payload),
                    "config": ConfigRecord(
                        {
                            "round": server_round,
                            "client": client,
                            "plan": plan,
                            "bytes-down": bytes_down,
                            "frozen-bytes": frozen_bytes,
                            "stats": stats,
                            "run-config": self.server.config_toml(),
                        }
                    ),
                }
            )
            messages.append(Message(content, dst_node_id=self.node_of_client[client], message_type=MessageType.TRAIN, group_id=str(server_round)))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        client_of_node = {node: client for client, node in self.node_of_client.items()}
        for reply in replies:
            if reply.has_error():
                node = reply.metadata.src_node_id
                log(WARNING, "round %d: node %s (client %s) failed: %s", server_round, node, client_of_node.get(node, "?"), reply.error.reason)
                continue
            meta = reply.content["meta"]
            self.server.receive(int(meta["client"]), from_record(reply.content["upload"]), str(meta["record"]))
        missing = self.server.missing()
        for client in missing:
            node = self.node_of_client[client]
            self.lost.add(node)
            log(
                WARNING,
                "round %d: lost node %s (client %d): no upload within %.0f s (failed, stopped or unreachable); left out of this merge, counted as skipped, and not sampled again",
                server_round,
                node,
                client,
                self.round_timeout,
            )
        record = self.server.finish_round(time.time() - self._started)
        self.records.append(record)
        accuracy = record["accuracy"]
        devices = sorted({c.get("device", "") for c in record["per_client"]})
        log(
            INFO,
            "round %d: accuracy %s, train loss %.4f, %d clients on %s, %.2f MB down, %.2f MB up, %.1f s",
            server_round,
            "-" if accuracy is None else f"{100 * accuracy:.2f} %",
            record["train_loss"],
            record["clients"],
            ", ".join(devices) or "-",
            record["bytes_down"] / 1e6,
            record["bytes_up"] / 1e6,
            record["wall_s"],
        )
        metrics = {k: float(record[k]) for k in ("train_loss", "bytes_down", "bytes_up", "frozen_bytes_down", "compute_s", "wall_s")}
        metrics["clients"] = int(record["clients"])
        return to_record(self.server.global_weights()), MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        # Evaluation is the server's, on the test split, as in `fedolf run`.
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        return None

    def evaluate_initial(self, arrays: ArrayRecord) -> Tuple[float, float]:
        """The initial model's `(accuracy, test loss)` on the server's test split (later
        rounds are evaluated in `aggregate_train`, as in `fedolf run`)."""
        self.server.set_global(from_record(arrays))
        self.initial = self.server.evaluate()
        return self.initial
