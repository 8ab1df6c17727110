"""Resolving, loading and unit maps (backend/engine/models.py).

- GGUF files convert into a safetensors folder under $SSAH_HOME with the original model's logits; broken ones fail
  with a ModelError that names the file and leave nothing behind.
- Hub ids are found in the local Hugging Face cache (named by the environment at call time), never downloaded.
- Bad models, devices and dtypes get clear errors (the CLI-level ones live in tests/test_cli.py).
- Unit maps of every architecture in tests/tiny.py: slabs lie inside their parameters, units own disjoint entries
  that together cover the split tensors, GQA heads of one group share their k/v slabs, and perturbing a unit's own
  slabs moves only that unit's B-input channels.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import ARCHS, archs, write_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.engine import atomic
from backend.engine.models import ModelError, load_model, resolve
from backend.engine.units import unit_map

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def ssah_home(tmp_path, monkeypatch) -> Path:
    """A private cache for converted models and hashes, so that no test touches the user's ~/.cache/ssah."""
    home = tmp_path / "ssah-home"
    monkeypatch.setenv("SSAH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in cache:
            cache[arch] = AutoModelForCausalLM.from_pretrained(tiny_model_path(arch), dtype=torch.float32).eval()
        return cache[arch]

    return get


def _ids(model: torch.nn.Module, n: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, model.config.vocab_size, (2, n), generator=gen)


# ---------------------------------------------------------------- GGUF files

@pytest.fixture(scope="module")
def llama_gguf(tiny_model_path, tmp_path_factory) -> tuple[Path, Path]:
    """(folder, .gguf) of the tiny GQA Llama: 4 query heads on 2 KV heads, so llama.cpp's k permutation matters."""
    folder = tiny_model_path("llama-gqa")
    return folder, write_gguf(folder, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_file_converts_to_a_cached_folder_with_the_same_logits(llama_gguf, ssah_home):
    import gguf

    folder, path = llama_gguf
    original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # the file really holds llama.cpp's interleaved q/k rows, so equal logits prove transformers undid them
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    q = original.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert stored["blk.0.attn_q.weight"].shape == q.shape
    assert not np.allclose(stored["blk.0.attn_q.weight"], q)

    out = resolve(str(path))
    assert out.parent == ssah_home / "gguf"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert resolve(str(path)) == out and (out / "model.safetensors").stat().st_mtime_ns == mtime  # converted once
    assert [p.name for p in (ssah_home / "gguf").iterdir()] == [out.name]  # no temporary folder left behind

    loaded = load_model(str(path), device="cpu", dtype="float32")
    assert loaded.folder == out and loaded.units.architecture == "llama"
    assert loaded.units.n_units == unit_map(original).n_units
    ids = _ids(original, 30)
    with torch.no_grad():
        got, want = loaded.model(ids).logits, original(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "How do I pick a lock? Please, café."}],
                                   add_generation_prompt=True, tokenize=False)
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "How do I pick a lock? Please, café."}],
                                                add_generation_prompt=True, tokenize=False) == text
    assert loaded.tokenizer(text).input_ids == tok(text).input_ids
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(loaded.tokenizer, name) == getattr(tok, name), name


@pytest.mark.parametrize("case, expected", [
    ("random-bytes", "cannot read GGUF file"),
    ("truncated", "cannot read GGUF file"),
    ("missing-tensor", "lacks tensors for 1 parameters (model.layers.1.mlp.up_proj.weight)"),
    ("unknown-tokenizer", "cannot read GGUF file"),
])
def test_broken_gguf_names_the_file_and_leaves_nothing_in_the_cache(case, expected, llama_gguf, tmp_path, ssah_home):
    folder, good = llama_gguf
    path = tmp_path / f"{case}.gguf"
    if case == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[:-64])
    elif case == "missing-tensor":  # transformers would quietly fill it with random weights
        write_gguf(folder, path, drop=("blk.1.ffn_up.weight",))
    else:
        write_gguf(folder, path, tokenizer_model="no-such-tokenizer")
    for attempt in range(2):  # a failed conversion caches nothing: the second try fails the same way
        with pytest.raises(ModelError) as err:
            load_model(str(path), device="cpu", dtype="float32")
        assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
        # only the memo of file hashes may remain: no converted folder, no temporary one
        leftovers = [p.relative_to(ssah_home) for p in ssah_home.rglob("*")] if ssah_home.exists() else []
        assert {str(p) for p in leftovers} <= {"hashes.json"}, leftovers


# ---------------------------------------------------------------- hub ids in the local cache

def _fake_hub_cache(hub: Path, repo_id: str, source: Path) -> Path:
    """Lay `source`'s files out as huggingface_hub's cache does: blobs by hash, a snapshot of symlinks, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in sorted(source.iterdir()):
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every attempt to open a connection is recorded and refused."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_is_found_in_the_local_cache(env, tiny_model_path, tmp_path, monkeypatch, no_network):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    if env == "HF_HUB_CACHE":
        hub = tmp_path / "hub-cache"
        monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    else:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        hub = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(hub, "tiny-org/tiny-qwen2", tiny_model_path("qwen2"))
    assert resolve("tiny-org/tiny-qwen2").resolve() == snapshot.resolve()
    loaded = load_model("tiny-org/tiny-qwen2", device="cpu", dtype="float32")
    assert loaded.units.architecture == "qwen2"
    assert loaded.describe()["name"] == "tiny-org/tiny-qwen2"
    assert no_network == []


def test_hub_id_not_in_the_cache_is_refused_without_a_download(tiny_model_path, tmp_path, monkeypatch, no_network):
    hub = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # local-only lookups must not depend on the user's setting
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _fake_hub_cache(hub, "tiny-org/tiny-qwen2", tiny_model_path("qwen2"))
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and this tool never downloads"):
        resolve("tiny-org/not-cached")
    assert no_network == []


def test_cached_hub_snapshot_with_pickled_weights_is_refused(tiny_model_path, tmp_path, monkeypatch):
    source = tmp_path / "pickled"
    source.mkdir()
    shutil.copy(tiny_model_path("qwen2") / "config.json", source)
    (source / "pytorch_model.bin").write_bytes(b"not unpickled")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "tiny-org/pickled", source)
    with pytest.raises(ModelError, match="never unpickles"):
        resolve("tiny-org/pickled")


# ---------------------------------------------------------------- model errors (the CLI covers unknown names,
# missing paths, folders without config.json, unsupported architectures and pickled weights in local folders)

def test_remote_code_model_is_refused(tiny_model_path, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_path("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelError, match="remote code, which this tool never runs") as err:
        load_model(str(folder), device="cpu")
    assert "'my_custom_lm'" in str(err.value) and str(folder) in str(err.value)


def test_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file but not a .gguf model"):
        resolve(str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_device_is_refused(device, tiny_model_path):
    with pytest.raises(ModelError, match="no CUDA device is available"):
        load_model(str(tiny_model_path("llama")), device=device)


def test_unknown_device_and_dtype_are_refused_with_the_allowed_values(tiny_model_path):
    folder = str(tiny_model_path("llama"))
    with pytest.raises(ModelError, match=r"device must be auto, cpu or cuda, got 'tpu'"):
        load_model(folder, device="tpu")
    with pytest.raises(ModelError, match=r"dtype must be auto, float32, bfloat16 or float16, got 'int8'"):
        load_model(folder, device="cpu", dtype="int8")


# ---------------------------------------------------------------- unit maps

def _owner_key(slab, unit: int) -> tuple:
    return ("unit", unit) if slab.share == 1 else ("group", unit // slab.share)


@pytest.mark.parametrize("arch", archs())
def test_unit_slabs_lie_inside_their_parameters_and_partition_them(arch, tiny_model):
    """Every slab index is inside its parameter; within a block, the entries of each split tensor are owned by
    exactly one unit (or one GQA group), and together they cover the tensor along the split axis."""
    model = tiny_model(arch)
    um = unit_map(model)
    named = dict(model.named_parameters())
    n_layers = model.config.num_hidden_layers
    assert [(b.layer, b.module) for b in um.blocks] == [(i, m) for i in range(n_layers) for m in ("attn", "mlp")]
    for b in um.blocks:
        where = f"{arch} {b.key}"
        weight = model.get_submodule(b.b_module).weight
        assert b.slabs[0].param == f"{b.b_module}.weight" and b.slabs[0].dim == b.b_dim, where
        assert weight.shape[b.b_dim] == b.channels, f"{where}: B has {weight.shape[b.b_dim]} input channels"
        for u in range(b.n_units):  # the B slab of unit u is exactly its scored channels
            assert b.slabs[0].indices(u).tolist() == list(range(u * b.unit_size, (u + 1) * b.unit_size)), where
        owners: dict[str, list[list]] = {}
        for s in b.slabs:
            assert s.param in named, f"{where}: {s.param} is not a parameter"
            n = named[s.param].shape[s.dim]
            entries = owners.setdefault(s.param, [[] for _ in range(n)])
            for u in range(0, b.n_units, s.share):  # one representative per GQA group
                idx = s.indices(u).numpy()
                assert len(idx) == s.size and idx.min() >= 0 and idx.max() < n, (
                    f"{where}: unit {u} of {s.param} has indices {idx.min()}..{idx.max()} outside [0, {n})")
                for i in idx:
                    entries[i].append(_owner_key(s, u))
        for param, entries in owners.items():
            shared = [i for i, e in enumerate(entries) if len(e) > 1]
            assert not shared, f"{where}: {param} entry {shared[0]} is owned by {entries[shared[0]]}"
            unowned = [i for i, e in enumerate(entries) if not e]
            assert not unowned, f"{where}: {param} entries {unowned[:5]}... belong to no unit"
        own = sum(int(np.prod(named[s.param].shape)) // named[s.param].shape[s.dim] * s.size
                  for s in b.slabs if s.share == 1)
        assert (b.params >= own).all() and (b.params > 0).all(), where


@pytest.mark.parametrize("arch", archs([a for a in ARCHS if a not in ("llama", "gpt2", "gpt_neox")]))
def test_gqa_heads_of_one_group_share_their_key_and_value_slabs(arch, tiny_model):
    model = tiny_model(arch)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert kv < heads, f"{arch} is meant to be a GQA model"
    group = heads // kv
    for b in unit_map(model).blocks:
        if b.module != "attn":
            continue
        shared = [s for s in b.slabs if s.share > 1]
        params = {s.param for s in shared if s.param.endswith(".weight")}
        if any(s.param.endswith("qkv_proj.weight") for s in b.slabs):  # Phi-3: k and v rows of the fused weight
            assert {s.offset for s in shared} == {heads * b.unit_size,
                                                                               (heads + kv) * b.unit_size}
        else:
            assert params == {f"{b.b_module.rsplit('.', 1)[0]}.{p}_proj.weight" for p in "kv"}, params
        assert all(s.share == group for s in shared), [s.share for s in shared]
        for s in shared:
            for h in range(heads):
                first = s.indices(h - h % group)
                assert torch.equal(s.indices(h), first), f"{arch} {b.key}: head {h} of {s.param}"
                if h % group == 0 and h > 0:
                    assert not torch.equal(first, s.indices(h - group)), f"{arch} {b.key}: groups coincide"
        # and their share: each head owns q + o + 1/group of its group's k and v
        named = dict(model.named_parameters())
        kv_entries = sum(s.size * int(np.prod(named[s.param].shape)) // named[s.param].shape[s.dim] for s in shared)
        own = sum(s.size * int(np.prod(named[s.param].shape)) // named[s.param].shape[s.dim]
                  for s in b.slabs if s.share == 1)
        assert (b.params == own + kv_entries // group).all(), f"{arch} {b.key}: {b.params}"


# OLMo-2 normalises q (and k) over all heads together (q_norm has heads * d_h weights), so a change to one head's
# q rows rescales every head's queries: its heads are coupled through q/k, not through v.
_QK_COUPLED = {"olmo2"}


@torch.no_grad()
def _b_input(model: torch.nn.Module, b_module: str, ids: torch.Tensor) -> torch.Tensor:
    got = {}
    handle = model.get_submodule(b_module).register_forward_pre_hook(
        lambda mod, args: got.__setitem__("x", args[0].detach().clone()))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return got["x"].reshape(-1, got["x"].shape[-1])


@pytest.mark.parametrize("arch", archs())
@torch.no_grad()
def test_changing_a_units_input_slabs_moves_only_its_own_channels(arch, tiny_model):
    """What the map says a unit owns on the input side (A rows, its share of k/v) feeds that unit's B-input
    channels and no other unit's: perturb one unit's (or one GQA group's) entries of one slab and see which
    channels of B's input move."""
    model = tiny_model(arch)
    named = dict(model.named_parameters())
    ids = _ids(model)
    gen = torch.Generator().manual_seed(1)
    for b in unit_map(model).blocks:
        base = _b_input(model, b.b_module, ids)
        tol = 1e-5 * float(base.abs().max())
        units = range(b.n_units) if b.module == "attn" else sorted({0, b.n_units // 2, b.n_units - 1})
        for s in b.slabs[1:]:
            p = named[s.param]
            coupled = arch in _QK_COUPLED and any(f"{x}_proj." in s.param for x in "qk")
            for u in units:
                if s.share > 1 and u % s.share:
                    continue
                members = range(u - u % s.share, u - u % s.share + s.share)
                expected = {c for v in members for c in range(v * b.unit_size, (v + 1) * b.unit_size)}
                idx = s.indices(u)
                saved = p.detach().clone()
                try:
                    part = p.index_select(s.dim, idx)
                    p.index_copy_(s.dim, idx, part + 0.5 * torch.randn(part.shape, generator=gen))
                    moved = (_b_input(model, b.b_module, ids) - base).abs().amax(dim=0) > tol
                finally:
                    p.copy_(saved)
                changed = set(torch.nonzero(moved).flatten().tolist())
                where = f"{arch} {b.key} unit {u} {s.param}[{idx[0]}:{idx[-1] + 1}] (dim {s.dim})"
                if not coupled:
                    assert changed <= expected, f"{where} moved other units' channels {sorted(changed - expected)[:8]}"
                if s.param.endswith(".weight"):  # (a key bias can cancel in the softmax; weights cannot)
                    assert changed & expected, f"{where} moved none of its own channels"


def test_atomic_write_replaces_whole_files_and_a_failed_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_text(target, '{"a": 1}')
    atomic.write_bytes(target, b'{"a": 2}')
    assert target.read_bytes() == b'{"a": 2}'
    # a write that cannot land (the name is taken by a folder) raises, keeps what was there, leaves no temp file
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    with pytest.raises(OSError):
        atomic.write_bytes(folder, b"new")
    assert (folder / "inside.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "taken"]
