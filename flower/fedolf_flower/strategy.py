"""The fedolf run as a Flower Strategy.

Every decision is the Rust core's (`fedolf.Server`, the simulator's own federation code):
which clients a round samples, each one's capacity cluster and plan (layers frozen, width
kept), the download (frozen prefix TOA-sparsified, active layers in full), and the
layer-by-layer merge. This class maps clients to Flower nodes and plans to messages.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Dict, Iterable, List, Optional, Tuple

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
        self.records: List[dict] = []
        self.initial: Optional[Tuple[float, float]] = None
        self._started = 0.0

    def summary(self) -> None:
        log(INFO, "\t├── fedolf method: %s, %d clients (one per node), %d layers", self.server.method, self.server.num_clients, self.server.num_layers)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._started = time.time()
        # The ArrayRecord Flower carries is the global model; the server plans from it.
        self.server.set_global(from_record(arrays))
        stats = [x for pair in self.server.stats() for x in pair]
        messages = []
        for client, plan in self.server.plan_round(server_round):
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
        for reply in replies:
            if reply.has_error():
                log(WARNING, "node %s failed this round: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            meta = reply.content["meta"]
            self.server.receive(int(meta["client"]), from_record(reply.content["upload"]), str(meta["record"]))
        missing = self.server.missing()
        if missing:
            nodes = [self.node_of_client[c] for c in missing]
            log(WARNING, "round %d: no upload from clients %s (nodes %s: failed, or no reply within %.0f s); they are left out of the merge and counted as skipped", server_round, missing, nodes, self.round_timeout)
        record = self.server.finish_round(time.time() - self._started)
        self.records.append(record)
        accuracy = record["accuracy"]
        log(
            INFO,
            "round %d: accuracy %s, train loss %.4f, %d clients, %.2f MB down, %.2f MB up, %.1f s",
            server_round,
            "-" if accuracy is None else f"{100 * accuracy:.2f} %",
            record["train_loss"],
            record["clients"],
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

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        """Flower's centralized evaluation hook: round 0 evaluates the initial model, later
        rounds report what `aggregate_train` measured."""
        if server_round == 0:
            self.server.set_global(from_record(arrays))
            self.initial = self.server.evaluate()
            return MetricRecord({"accuracy": self.initial[0], "loss": self.initial[1]})
        record = self.records[-1]
        if record["accuracy"] is None:
            return None
        return MetricRecord({"accuracy": record["accuracy"], "loss": record["test_loss"]})
