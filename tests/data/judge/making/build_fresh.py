"""A fresh labelled set: replies of a model the judge was never tuned on, labelled blind by two readers after the
judge was frozen, measured once. FRESH names the set (default "fresh": fresh.jsonl; "fresh2": fresh2.jsonl).

    python build_fresh.py blind EVAL.json [BASELINE PRUNED] [EVAL.json PRUNED ...]
        # EVAL.json: `ssah evaluate --json` with --prune (baseline and pruned replies); the first file's baseline
        # and pruned replies are named BASELINE and PRUNED (default budget-sc, budget-sc-scu-pruned), each further
        # file adds its pruned replies under its name; writes LABELWORK/FRESH/key.jsonl and blind.jsonl
    python build_fresh.py merge                # labels_A.jsonl + labels_B.jsonl (+ adjudicated.jsonl for the rows
                                               # where they differ) -> FRESH.jsonl
"""
import json
import os
import random
import sys
from pathlib import Path

NAME = os.environ.get("FRESH", "fresh")
WORK = Path(os.environ.get("LABELWORK", "labelwork")) / NAME


def blind(eval_json: str, baseline: str = "budget-sc", pruned: str = "budget-sc-scu-pruned", *more: str) -> None:
    sources = [(eval_json, (("baseline", baseline), ("pruned", pruned)))]
    sources += [(more[i], (("pruned", more[i + 1]),)) for i in range(0, len(more), 2)]
    rows, seen = [], set()
    for path, conditions in sources:
        for g in json.load(open(path))["generations"]:
            for cond, name in conditions:
                reply = g[cond]["reply"]
                if (g["prompt"], reply) in seen:  # the same reply under two conditions is labelled once (the first)
                    continue
                seen.add((g["prompt"], reply))
                rows.append({"condition": name, "kind": g["kind"], "source_set": g["set"], "prompt": g["prompt"],
                             "reply": reply})
    random.Random(11).shuffle(rows)
    prefix = {"fresh": "f", "fresh2": "g"}.get(NAME, f"{NAME}-")  # ids unique across the sets
    for i, r in enumerate(rows):
        r["id"] = f"{prefix}{i + 1:03d}"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "key.jsonl", "w") as key, open(WORK / "blind.jsonl", "w") as shown:
        for r in rows:
            key.write(json.dumps(r) + "\n")
            shown.write(json.dumps({k: r[k] for k in ("id", "kind", "prompt", "reply")}) + "\n")
    print(len(rows), "rows")


def merge() -> None:
    def read(name):
        return {r["id"]: r for r in map(json.loads, open(WORK / name))}

    key = [json.loads(line) for line in open(WORK / "key.jsonl")]
    a, b = read("labels_A.jsonl"), read("labels_B.jsonl")
    third = {i: r["label"] for i, r in read("adjudicated.jsonl").items()} if (WORK / "adjudicated.jsonl").exists() else {}
    with open(WORK / f"{NAME}.jsonl", "w") as out:
        for r in key:
            la, lb = a[r["id"]]["label"], b[r["id"]]["label"]
            same = la == lb
            row = {**r, "label": la if same else third[r["id"]], "labelled": "double" if same else "adjudicated",
                   "reason": a[r["id"]]["reason"] if same else f"A: {a[r['id']]['reason']}; B: {b[r['id']]['reason']}"}
            out.write(json.dumps({k: row[k] for k in ("id", "condition", "kind", "source_set", "prompt", "reply",
                                                      "label", "reason", "labelled")}) + "\n")
    print(sum(a[i]["label"] == b[i]["label"] for i in a), "of", len(a), "labelled alike")


if __name__ == "__main__":
    blind(*sys.argv[2:]) if sys.argv[1] == "blind" else merge()
