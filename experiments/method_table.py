#!/usr/bin/env python3
"""Markdown table of multi-seed runs: one row per run folder (its summary.json holds the
trials' spreads). Usage: python3 experiments/method_table.py runs/table > table.md"""
import json
import pathlib
import sys


def pct(spread):
    if not spread:
        return "n/a"
    return f"{spread['mean'] * 100:.2f} ± {spread['std'] * 100:.2f} %"


ORDER = ["fedolf", "tinyfel", "random-freeze", "cocofl", "slt", "fedavg", "fedavg-drop", "heterofl", "feddrop", "fjord",
         "depthfl", "scalefl", "adaptivefl", "nefl"]


def rank(path):
    method = json.loads(path.read_text()).get("method", "")
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def main(root):
    rows = []
    for summary_path in sorted(pathlib.Path(root).glob("*/summary.json"), key=rank):
        s = json.loads(summary_path.read_text())
        if "trials" not in s:
            continue
        trials = [t for t in s["trials"] if t["status"] == "completed"]
        n = max(len(trials), 1)
        mean = lambda key: sum(t[key] or 0 for t in trials) / n
        finals = ", ".join(f"{t['final_accuracy'] * 100:.2f}" for t in trials)
        # Multi-exit methods: the ensemble of every exit (mean-last, spread over trials).
        ensemble = pct(s["mean_last_accuracy_ensemble"]) if s.get("mean_last_accuracy_ensemble") else ""
        rows.append(
            f"| `{s['method']}` | {pct(s['final_accuracy'])} | {pct(s['mean_last_accuracy'])} | {pct(s['best_accuracy'])} "
            f"| {finals} | {mean('total_bytes_down') / 1e9:.3f} | {mean('total_bytes_up') / 1e9:.3f} "
            f"| {mean('mean_peak_mem_mb'):.1f} | {mean('mean_peak_extra_mb'):.1f} | {ensemble} | {s['trials_completed']}/{len(s['seeds'])} |"
        )
    print("| method | final acc | mean of last evals | best acc | final per seed | GB down | GB up | peak MB (absolute) | peak MB (extra) | exit ensemble, mean of last | trials |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/table")
