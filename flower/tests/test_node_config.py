"""A node's config and a resumed server: bad values are refused with the field named."""

import os
import tempfile
import unittest
from types import SimpleNamespace

from common import CONFIG, SMALL

import fedolf
from fedolf_flower.client_app import node_identity


def context(**config):
    return SimpleNamespace(node_config={"partition-id": 0, "num-partitions": 3, **config})


class NodeConfig(unittest.TestCase):
    def test_device_and_memory_are_read(self):
        node = node_identity(context(device="cpu", **{"memory-mb": 12.5}))
        self.assertEqual((node["device"], node["memory-mb"]), ("cpu", 12.5))
        self.assertEqual(node_identity(context())["device"], "cpu")

    def test_an_unknown_device_is_named(self):
        with self.assertRaises(ValueError) as caught:
            node_identity(context(device="tpu"))
        self.assertIn("device = 'tpu'", str(caught.exception))

    def test_a_budget_must_be_positive(self):
        with self.assertRaises(ValueError) as caught:
            node_identity(context(**{"memory-mb": -3}))
        self.assertIn("memory-mb = -3", str(caught.exception))

    def test_a_node_calibrates_on_its_device_and_the_server_plans_from_it(self):
        memory = SMALL + ['federation.capacity="memory"', "federation.budgets_mb=[1000.0]", "federation.clients_per_round=3"]
        server = fedolf.Server(CONFIG, None, memory)
        client = fedolf.Client(server.config_toml(), 0, 3, None, "cpu")
        calibration = client.calibrate()
        # A budget below every level's predicted peak: the node sits the round out.
        server.declare_memory(0, 0.001, calibration)
        self.assertNotIn(0, [k for k, _ in server.plan_round(1)])
        with self.assertRaises(fedolf.FedolfError) as caught:
            server.declare_memory(0, float("nan"), calibration)
        self.assertIn("client 0", str(caught.exception))

    def test_memory_declared_to_a_cluster_run_is_refused(self):
        server = fedolf.Server(CONFIG, None, SMALL)
        with self.assertRaises(fedolf.FedolfError) as caught:
            server.declare_memory(0, 100.0, '{"batch": 32, "rows": []}')
        self.assertIn("federation.capacity", str(caught.exception))


class Resume(unittest.TestCase):
    def test_a_folder_without_a_checkpoint_is_refused_and_left_alone(self):
        with tempfile.TemporaryDirectory() as run:
            with self.assertRaises(fedolf.FedolfError) as caught:
                fedolf.Server(CONFIG, run, SMALL, resume=run)
            self.assertIn(os.path.join(run, "checkpoint", "state.json"), str(caught.exception))
            self.assertEqual(os.listdir(run), [])


if __name__ == "__main__":
    unittest.main()
