"""A run through the bindings (the calls the Flower app makes: Server plans and downloads,
each Client trains its partition, Server receives and merges) equals `fedolf run` for the
same config and seed: every rounds.csv and clients.csv value but time and memory."""

import csv
import json
import math
import os
import subprocess
import tempfile
import threading
import time
import unittest

from common import CONFIG_PATH, CONFIG, MACHINE_COLUMNS, SMALL, fedolf_binary

import fedolf


def through_bindings(overrides, out_dir):
    server = fedolf.Server(CONFIG, out_dir, overrides)
    n = server.num_clients
    clients = {k: fedolf.Client(server.config_toml(), k, n) for k in range(n)}
    for round_ in range(1, server.rounds + 1):
        started = time.time()
        for client, plan in server.plan_round(round_):
            payload, bytes_down, _ = server.download(client)
            layers, record = clients[client].train(round_, plan, payload, server.stats(), bytes_down)
            server.receive(client, layers, json.dumps(record))
        server.finish_round(time.time() - started)
    server.write_summary(0.0)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in MACHINE_COLUMNS} for row in csv.DictReader(f)]


class BindingsEqualSimulator(unittest.TestCase):
    def check(self, extra):
        overrides = SMALL + extra
        with tempfile.TemporaryDirectory() as tmp:
            flower_dir = os.path.join(tmp, "bindings")
            through_bindings(overrides, flower_dir)
            args = [fedolf_binary(), "run", "--quiet", "--config", str(CONFIG_PATH), "--out", os.path.join(tmp, "sim")]
            for o in overrides:
                args += ["--set", o]
            subprocess.run(args, check=True, timeout=600)
            (sim_dir,) = [os.path.join(tmp, "sim", d) for d in os.listdir(os.path.join(tmp, "sim"))]
            for name in ("rounds.csv", "clients.csv"):
                ours, theirs = rows(os.path.join(flower_dir, name)), rows(os.path.join(sim_dir, name))
                self.assertEqual(len(ours), len(theirs), name)
                self.assertEqual(ours, theirs, f"{extra}: {name}")
            accuracy = [float(r["accuracy"]) for r in rows(os.path.join(flower_dir, "rounds.csv"))]
            self.assertGreater(accuracy[-1], 0.3, accuracy)

    def test_fedolf_with_toa(self):
        self.check(["method=fedolf", "toa.s=0.5"])

    def test_heterofl(self):
        self.check(["method=heterofl"])

    def test_fedavg(self):
        self.check(["method=fedavg"])

    def test_memory_budgets(self):
        # Budgets half way (geometrically) between this machine's calibrated level peaks
        # (resident + measured transient at full batches; the CNN at batch 32: about 6.7 MB
        # with 2 layers frozen, 10 with 1, 19 with none), not at fixed MB: kernel scratch moves
        # the peaks from CPU to CPU. Far from every peak, both processes' own calibrations
        # choose the same plans (l = 2, 1, 0).
        probe = fedolf.Server(CONFIG, None, SMALL + ["federation.capacity=\"memory\"", "federation.budgets_mb=[100000]"])
        rows = json.loads(probe.calibration())["rows"]
        peaks = [(r["resident"] + r["measured_transient"]) / 1e6 for r in rows]
        budgets = [math.sqrt(peaks[0] * peaks[1]), math.sqrt(peaks[1] * peaks[2]), 10 * peaks[2]]
        listed = ", ".join(f"{b:.3f}" for b in budgets)
        self.check(["federation.capacity=\"memory\"", f"federation.budgets_mb=[{listed}]"])

class Functions(unittest.TestCase):
    def test_toa_sparsify_matches_the_download(self):
        server = fedolf.Server(CONFIG, None, SMALL + ["toa.s=0.5"])
        global0 = server.global_weights()
        for client, plan in server.plan_round(1):
            frozen = sum(r == "FrozenNoGraph" for r in json.loads(plan)["roles"])
            if frozen < 2:
                continue
            prefix = {k: v for k, v in global0.items() if fedolf.layer_of(k) < frozen}
            sent, full, kept = fedolf.toa_sparsify("cnn", (1, 28, 28), 10, prefix, 0.5, 42, 1, client)
            payload, _, frozen_bytes = server.download(client)
            self.assertEqual(kept * 4, frozen_bytes)
            self.assertLess(kept, full)
            for key, value in sent.items():
                self.assertTrue((payload[key] == value).all(), key)
            return
        self.fail("no client froze two layers")

    def test_init_weights_is_the_servers_initial_model(self):
        server = fedolf.Server(CONFIG, None, SMALL)
        mine = fedolf.init_weights("cnn", (1, 28, 28), 10, 42)
        theirs = server.global_weights()
        self.assertEqual(sorted(mine), sorted(theirs))
        for key in mine:
            self.assertTrue((mine[key] == theirs[key]).all(), key)

    def test_bad_config_and_partition_are_named(self):
        with self.assertRaises(fedolf.FedolfError) as caught:
            fedolf.Client(CONFIG, 5, 3)
        self.assertIn("partition-id", str(caught.exception))
        with self.assertRaises(fedolf.FedolfError) as caught:
            fedolf.Client(CONFIG, 0, 4)
        self.assertIn("num-partitions", str(caught.exception))
        with self.assertRaises(fedolf.FedolfError) as caught:
            fedolf.Server(CONFIG, None, ["train.lr=fast"])
        self.assertIn("train.lr", str(caught.exception))

    def test_merge_and_evaluation_release_the_gil(self):
        # The server's slow steps (ResNet20 evaluated on 2,000 test images, after a round's
        # merge) while another Python thread ticks every millisecond: the ticker goes on only
        # if the GIL is released (a thread inside native code that holds it never yields).
        server = fedolf.Server(CONFIG, None, SMALL + ['model.name="resnet20"', "data.test_limit=2000", "federation.eval_every=1"])
        ticks = [0]
        stop = threading.Event()

        def tick():
            while not stop.is_set():
                ticks[0] += 1
                time.sleep(0.001)

        ticker = threading.Thread(target=tick)
        ticker.start()
        try:
            for name, step in [("evaluate", server.evaluate), ("finish_round", lambda: (server.plan_round(1), server.finish_round(0.0)))]:
                time.sleep(0.05)
                before, started = ticks[0], time.time()
                step()
                took, during = time.time() - started, ticks[0] - before
                self.assertGreater(took, 0.1, f"{name} was too quick to show anything")
                self.assertGreater(during, 0.2 * took / 0.0011, f"{name}: {during} ticks in {took:.2f} s; the GIL was held")
        finally:
            stop.set()
            ticker.join()

    def test_ordered_plan(self):
        plan = json.loads(fedolf.ordered_plan(3, 2))
        self.assertEqual(plan["roles"], ["FrozenNoGraph", "FrozenNoGraph", "Trained"])
        with self.assertRaises(fedolf.FedolfError):
            fedolf.ordered_plan(3, 3)


if __name__ == "__main__":
    unittest.main()
