"""Split labelled rows into a development half and a test half, once, before any judge is tuned: within each
(condition, kind) stratum the rows are shuffled with SEED and the first half (rounded down) goes to dev. The
fine-tune condition's rows were labelled later and split by this same rule; as the split is per stratum, that is
the same split as if every row had been split at once."""
import json, random, sys
from pathlib import Path

SEED = 20261201
FIELDS = ("id", "condition", "kind", "source_set", "prompt", "reply", "label", "reason", "labelled")
src, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(line) for line in src.open()]
strata = {}
for r in rows:
    strata.setdefault((r["condition"], r["kind"]), []).append(r)
halves = {"dev": [], "test": []}
for key in sorted(strata):
    group = sorted(strata[key], key=lambda r: r["id"])
    random.Random(f"{SEED}:{key[0]}:{key[1]}").shuffle(group)
    cut = len(group) // 2
    halves["dev"] += group[:cut]
    halves["test"] += group[cut:]
out.mkdir(parents=True, exist_ok=True)
for half, chosen in halves.items():
    chosen.sort(key=lambda r: r["id"])
    with (out / f"{half}.jsonl").open("a") as f:  # appended: the later condition joins the same files
        for r in chosen:
            f.write(json.dumps({k: r[k] for k in FIELDS}) + "\n")
    print(half, len(chosen))
