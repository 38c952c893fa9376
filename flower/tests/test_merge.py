"""The Flower strategy's merge (messages in, ArrayRecord out) equals the simulator's
layer-wise aggregation (fedolf.aggregate, the function `fedolf run` merges with) bit for
bit, and bad replies are refused by client."""

import json
import unittest

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from common import CONFIG, SMALL
from flwr.supercore.task_identity import TaskIdentity

import fedolf
from fedolf_flower.records import from_record, to_record
from fedolf_flower.strategy import FedolfStrategy


def record_for(client, round_, samples):
    return {
        "round": round_, "client": client, "cluster": 0, "frozen": 0, "samples": samples,
        "bytes_down": 1, "bytes_up": 1, "compute_s": 0.5, "peak_mem_mb": None, "peak_extra_mb": None, "train_loss": 1.0,
    }


class MergeEquivalence(unittest.TestCase):
    def setUp(self):
        # What a ServerApp process has set before its strategy builds messages.
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
        self.server = fedolf.Server(CONFIG, None, SMALL + ["toa.s=0.5"])
        self.strategy = FedolfStrategy(self.server, {0: 101, 1: 102, 2: 103}, 60)
        self.global0 = self.server.global_weights()
        self.messages = list(self.strategy.configure_train(1, to_record(self.global0), ConfigRecord(), None))

    def replies(self, rng, tamper=None):
        replies, uploads = [], []
        for msg in self.messages:
            config = msg.content["config"]
            client = int(config["client"])
            trained = [i for i, role in enumerate(json.loads(str(config["plan"]))["roles"]) if role == "Trained"]
            layers = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in self.global0.items() if fedolf.layer_of(k) in trained}
            if tamper:
                layers = tamper(client, layers)
            samples = 100 + 37 * client
            content = RecordDict({"upload": to_record(layers), "meta": ConfigRecord({"client": client, "record": json.dumps(record_for(client, 1, samples))})})
            replies.append(Message(content, reply_to=msg))
            uploads.append((float(samples), layers, None))
        return replies, uploads

    def test_flower_merge_equals_the_simulators_aggregation(self):
        self.assertEqual(len(self.messages), 3)
        self.assertEqual({m.metadata.dst_node_id for m in self.messages}, {101, 102, 103})
        replies, uploads = self.replies(np.random.default_rng(0))
        merged, metrics = self.strategy.aggregate_train(1, replies)
        flower = from_record(merged)
        reference = fedolf.aggregate(self.global0, uploads)
        self.assertEqual(sorted(flower), sorted(reference))
        for key in reference:
            self.assertTrue(np.array_equal(flower[key], reference[key]), key)
        # Every layer was trained by someone, so every layer moved.
        for key in reference:
            self.assertFalse(np.array_equal(flower[key], self.global0[key]), key)
        self.assertEqual(metrics["clients"], 3)

    def test_frozen_prefix_travels_sparsified_and_active_layers_in_full(self):
        for msg in self.messages:
            plan = json.loads(str(msg.content["config"]["plan"]))
            frozen = sum(role == "FrozenNoGraph" for role in plan["roles"])
            payload = from_record(msg.content["payload"])
            conv1 = payload["0000.000:Conv.conv.weight"].shape[0]
            # TOA keeps floor(0.5 * 32) = 16 filters of conv 1 when two layers are frozen.
            self.assertEqual(conv1, 16 if frozen >= 2 else 32, plan)
            self.assertEqual(payload["0002.000:Dense.linear.weight"].shape, self.global0["0002.000:Dense.linear.weight"].shape)
            sent = sum(v.size for v in payload.values()) * 4
            self.assertEqual(sent, int(msg.content["config"]["bytes-down"]))

    def test_a_node_that_never_replies_is_left_out_and_counted(self):
        replies, uploads = self.replies(np.random.default_rng(3))
        with self.assertLogs("flwr", level="WARNING") as logs:
            merged, metrics = self.strategy.aggregate_train(1, replies[:2])
        self.assertIn("node", "\n".join(logs.output))
        self.assertEqual(self.strategy.records[-1]["skipped_clients"], 1)
        self.assertEqual(metrics["clients"], 2)
        reference = fedolf.aggregate(self.global0, uploads[:2])
        flower = from_record(merged)
        for key in reference:
            self.assertTrue(np.array_equal(flower[key], reference[key]), key)

    def test_an_upload_of_the_wrong_shape_names_the_client(self):
        def tamper(client, layers):
            if client == 1:
                key = max(layers)
                layers[key] = np.zeros(layers[key].size + 1, dtype=np.float32)
            return layers

        replies, _ = self.replies(np.random.default_rng(1), tamper)
        with self.assertRaises(fedolf.FedolfError) as caught:
            self.strategy.aggregate_train(1, replies)
        self.assertIn("client 1", str(caught.exception))

    def test_a_nan_upload_stops_the_run_by_default(self):
        def tamper(client, layers):
            if client == 2:
                key = max(layers)
                layers[key] = layers[key].copy()
                layers[key].flat[0] = np.nan
            return layers

        replies, _ = self.replies(np.random.default_rng(2), tamper)
        with self.assertRaises(fedolf.FedolfError) as caught:
            self.strategy.aggregate_train(1, replies)
        self.assertIn("NaN", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
