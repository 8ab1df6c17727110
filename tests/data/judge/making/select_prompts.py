"""Draw disjoint prompt sets per condition from the built-in sets (seed 20240601)."""
import json, os, random
from pathlib import Path
from backend.engine.data import load_pairs

SEED = 20240601
CONDITIONS = ["base", "safe", "safe-scu-pruned", "safe-ucu-pruned", "safe-random-pruned", "safe-benign-finetuned"]
PER = {  # prompts per condition from each set
    "advbench-eval": 13, "harmbench": 14, "donotanswer": 13,          # 40 harmful
    "benign-prompts": 11, "benign-edgy": 11, "alarming-benign": 10,   # 32 benign
}
rng = random.Random(SEED)
seen = set()
out = Path(os.environ.get("LABELWORK", "labelwork")) / "prompts"
manifest = {}
for name, k in PER.items():
    prompts = []
    for p in load_pairs(name).pairs:
        key = " ".join(p.prompt.lower().split())
        if key in seen:
            continue
        seen.add(key); prompts.append(p.prompt)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    need = k * len(CONDITIONS)
    assert need <= len(prompts), (name, need, len(prompts))
    for ci, cond in enumerate(CONDITIONS):
        idx = order[ci * k:(ci + 1) * k]
        d = out / cond; d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{name}.jsonl", "w") as f:
            for i in sorted(idx):
                f.write(json.dumps({"prompt": prompts[i], "response": ""}) + "\n")
        manifest.setdefault(cond, {})[name] = sorted(idx)
    print(name, len(prompts), "unique prompts, using", need)
(out / "manifest.json").write_text(json.dumps({"seed": SEED, "per_set": PER, "indices": manifest}, indent=1))
