#!/bin/bash
# Generations for the judge label set. One heavy command at a time.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
export PYTHONPATH="$PWD"
PY=${PYTHON:-.venv/bin/python}
SSAH="$PY -m backend.cli"
L=${LABELWORK:-labelwork}
sets() { # $1 = condition, $2 = harmful|benign
  local d=$L/prompts/$1
  if [ "$2" = harmful ]; then echo "$d/advbench-eval.jsonl,$d/harmbench.jsonl,$d/donotanswer.jsonl"
  else echo "$d/benign-prompts.jsonl,$d/benign-edgy.jsonl,$d/alarming-benign.jsonl"; fi
}
ev() { # $1 = condition, $2 = model, rest = extra args
  local c=$1 m=$2; shift 2
  if [ -s $L/raw/$c.json ]; then echo "skip $c"; return; fi
  echo "$(date -Is) start $c"
  $SSAH evaluate --model "$m" --harmful "$(sets $c harmful)" --benign "$(sets $c benign)" \
    --max-new-tokens 64 --device cpu --json --quiet "$@" > $L/raw/$c.json.tmp 2> $L/raw/$c.log
  mv $L/raw/$c.json.tmp $L/raw/$c.json
  echo "$(date -Is) done $c"
}
ev base smollm2-135m-instruct
ev safe smollm2-135m-safe
ev safe-scu-pruned smollm2-135m-safe --run $L/run-safe --prune SCU
ev safe-ucu-pruned smollm2-135m-safe --run $L/run-safe --prune UCU
ev safe-random-pruned smollm2-135m-safe --run $L/run-safe --prune random --seed 1
if [ ! -f $L/ft/finetune.json ]; then
  echo "$(date -Is) start finetune"
  $SSAH finetune --model smollm2-135m-safe --data benign-answers --steps 60 --lr 1e-4 --out $L/ft --limit 1 --quiet --device cpu --json > $L/raw/finetune.json 2> $L/raw/finetune.log
  echo "$(date -Is) done finetune"
fi
ev safe-benign-finetuned $L/ft
echo "$(date -Is) all done"
