"""A node with its own data folder (node config `data-dir`) trains on all of it."""

import json
import os
import struct
import tempfile
import unittest

import numpy as np

from common import CONFIG, SMALL

import fedolf


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes())


class NodeDataFolder(unittest.TestCase):
    def test_a_data_dir_node_trains_on_its_own_files(self):
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as folder:
            for split, n in (("train", 150), ("t10k", 20)):
                write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)), 0x803)
                write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), rng.integers(0, 10, n), 0x801)
            server = fedolf.Server(CONFIG, None, SMALL)
            client = fedolf.Client(server.config_toml(), 1, 3, folder)
            self.assertEqual(client.num_samples, 150)
            (k, plan), *_ = [(k, p) for k, p in server.plan_round(1) if k == 1] or [(None, None)]
            self.assertEqual(k, 1, "client 1 is sampled (3 clients, 3 per round)")
            payload, bytes_down, _ = server.download(1)
            layers, record = client.train(1, plan, payload, server.stats(), bytes_down)
            self.assertEqual(record["samples"], 150)
            server.receive(1, layers, json.dumps(record))

    def test_a_missing_data_dir_is_named(self):
        with self.assertRaises(fedolf.FedolfError) as caught:
            fedolf.Client(CONFIG, 0, 3, "/nonexistent/fedolf-node-data")
        self.assertIn("/nonexistent/fedolf-node-data", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
