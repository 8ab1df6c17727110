"""Merge raw evaluate outputs into one row list, drop the tool's verdicts, shuffle (seed 7), hide conditions.

Writes:
  rows_key.jsonl        all rows with condition (NOT read while labelling)
  blind/batch_XX.jsonl  shuffled rows without condition/verdict, 40 per batch
"""
import json, os, random
from pathlib import Path

L = Path(os.environ.get("LABELWORK", "labelwork"))
SHUFFLE_SEED = 7
SOURCES = {  # condition -> (raw file, which reply)
    "base": ("base.json", "baseline"),
    "safe": ("safe.json", "baseline"),
    "safe-scu-pruned": ("safe-scu-pruned.json", "pruned"),
    "safe-ucu-pruned": ("safe-ucu-pruned.json", "pruned"),
    "safe-random-pruned": ("safe-random-pruned.json", "pruned"),
    "safe-benign-finetuned": ("safe-benign-finetuned.json", "baseline"),
}
rows = []
import sys
only = sys.argv[1:] or list(SOURCES)  # conditions to build (the fine-tune's rows come later, as their own batch)
for cond, (fname, which) in SOURCES.items():
    if cond not in only:
        continue
    data = json.loads((L / "raw" / fname).read_text())
    for g in data["generations"]:
        src = Path(g["set"]).stem  # prompts/<cond>/<set>.jsonl -> <set>
        assert Path(g["set"]).parent.name == cond, (g["set"], cond)
        rows.append(dict(condition=cond, kind=g["kind"], source_set=src, prompt=g["prompt"],
                         reply=g[which]["reply"]))  # verdict deliberately dropped
print(len(rows), "rows")
random.Random(SHUFFLE_SEED).shuffle(rows)
for i, r in enumerate(rows, start=1):
    r["id"] = f"r{i:03d}"
tag = "" if only == list(SOURCES) else "_" + "-".join(only) if len(only) == 1 else ""
with open(L / f"rows_key{tag}.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps({k: r[k] for k in ("id", "condition", "kind", "source_set", "prompt", "reply")}) + "\n")
blind = L / "blind"; blind.mkdir(exist_ok=True)
for b in range(0, len(rows), 40):
    with open(blind / f"batch_{b // 40 + 1:02d}.jsonl", "w") as f:
        for r in rows[b:b + 40]:
            f.write(json.dumps({k: r[k] for k in ("id", "kind", "source_set", "prompt", "reply")}) + "\n")
