import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"===== {r['id']}  [{r['kind']} / {r['source_set']}]")
    print("PROMPT:", r["prompt"])
    print("REPLY :", repr(r["reply"]))
    print()
