#!/usr/bin/env python3
"""Markdown tables of a run's memory per client round, grouped by budget (capacity =
"memory") or by cluster (capacity = "clusters"), from its clients.csv.

    python3 experiments/budget_table.py RUN_DIR [RUN_DIR ...]

A multi-seed run folder is read trial by trial (trial-*/clients.csv, pooled).
"""
import csv
import glob
import json
import os
import sys


def rows(run):
    files = sorted(glob.glob(os.path.join(run, "trial-*", "clients.csv"))) or [os.path.join(run, "clients.csv")]
    out = []
    for f in files:
        with open(f) as fh:
            out += list(csv.DictReader(fh))
    return out


def num(v):
    return float(v) if v not in ("", None) else None


def table(run):
    rs = rows(run)
    budgets = any(r.get("budget_mb") for r in rs)
    print(f"\n`{os.path.basename(run.rstrip('/'))}`\n")
    if budgets:
        # Jittered budgets: group by the profile (the budget rounded to the nearest listed
        # profile is not known here), so group by frozen count instead.
        print("| frozen l | client rounds | budget MB (min–max) | predicted MB (min–max) | measured peak MB (min–max) | over budget | max error % |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        key = lambda r: int(r["frozen"])
    else:
        print("| cluster | frozen l | client rounds | measured peak MB (min–max) |")
        print("| --- | --- | --- | --- |")
        key = lambda r: (int(r["cluster"]), int(r["frozen"]))
    groups = {}
    for r in rs:
        groups.setdefault(key(r), []).append(r)
    for k in sorted(groups):
        g = groups[k]
        peak = [num(r["peak_mem_mb"]) for r in g]
        span = lambda v: f"{min(v):.1f}–{max(v):.1f}" if max(v) - min(v) >= 0.05 else f"{min(v):.1f}"
        if budgets:
            b = [num(r["budget_mb"]) for r in g]
            p = [num(r["predicted_mb"]) for r in g]
            over = sum(1 for pk, bb in zip(peak, b) if pk > bb)
            err = max(100 * abs(pk - pp) / pp for pk, pp in zip(peak, p))
            print(f"| {k} | {len(g)} | {span(b)} | {span(p)} | {span(peak)} | {over} | {err:.1f} |")
        else:
            print(f"| {k[0]} | {k[1]} | {len(g)} | {span(peak)} |")
    summary = os.path.join(run, "summary.json")
    if os.path.exists(summary):
        s = json.load(open(summary))
        if s.get("memory_budgets"):
            print(f"\nsummary.json `memory_budgets`: {json.dumps(s['memory_budgets'])}")


if __name__ == "__main__":
    for run in sys.argv[1:]:
        table(run)
