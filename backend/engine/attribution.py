"""Attribution: calibration sets in, a run (units table, channel means, manifest) out."""
from __future__ import annotations

import io
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save

from backend.constants import POSITIONS, SPLITS

from . import atomic
from .data import CalibrationSet, DataError, Pair, load_pairs
from .evaluation import generate
from .models import LoadedModel
from .roles import Thresholds, classify
from .scoring import Progress, block_scores, channel_stats, encode_sets

UNIT_COLUMNS = ["layer", "module", "unit", "params", "score_safety", "score_utility", "z_safety", "z_utility",
                "role"]


@dataclass
class Attribution:
    """The result of scoring one model: what `save` writes to a run folder."""

    units: pd.DataFrame
    means: dict[str, torch.Tensor]
    manifest: dict = field(default_factory=dict)
    self_responses: list[dict] | None = None  # with responses="self": the model's own replies that were scored
    variances: dict[str, torch.Tensor] | None = None  # unbiased channel variances, keyed as `means`

    def save(self, out: str | Path) -> Path:
        """Write units.parquet, means.safetensors and manifest.json (and variances.safetensors, and
        responses.jsonl with self responses); each file appears whole or not at all."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        units = io.BytesIO()
        write_units(self.units, units)
        files = {"units.parquet": units.getvalue(),
                 "means.safetensors": save({k: v.contiguous() for k, v in sorted(self.means.items())}),
                 "manifest.json": (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode()}
        if self.variances is not None:
            files["variances.safetensors"] = save({k: v.contiguous() for k, v in sorted(self.variances.items())})
        if self.self_responses is not None:
            files["responses.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in self.self_responses).encode()
        for name, data in files.items():
            atomic.write_bytes(out / name, data)
        return out


def write_units(units: pd.DataFrame, path) -> None:
    """Parquet with the contract's column types; no pandas index, deterministic bytes."""
    table = units[UNIT_COLUMNS].reset_index(drop=True)
    table.to_parquet(path, index=False, compression="zstd")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "ssah-dashboard", "safetensors", "pandas"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def as_calibration_set(rows: Sequence[Pair] | CalibrationSet, split: str) -> CalibrationSet:
    """Pairs given in memory become an unnamed calibration set, so every run records a content hash."""
    if isinstance(rows, CalibrationSet):
        return rows
    rows = tuple(rows)
    if not rows:
        raise DataError(f"the {split} calibration set is empty")
    return CalibrationSet(f"<{len(rows)} {split} pairs>", rows, "in memory")


def attribute(loaded: LoadedModel, safety: Sequence[Pair] | CalibrationSet,
              utility: Sequence[Pair] | CalibrationSet, *, batch_size: int = 8, max_length: int | None = None,
              positions: str = "response", thresholds: Thresholds = Thresholds(), padding_side: str = "right",
              seed: int = 0, progress: Progress | None = None) -> Attribution:
    """Score every unit of a loaded model on a safety and a utility set and classify it."""
    if positions not in POSITIONS:
        raise DataError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    t0 = time.perf_counter()
    sets = {split: as_calibration_set(rows, split) for split, rows in (("safety", safety), ("utility", utility))}
    pairs = {split: list(s.pairs) for split, s in sets.items()}
    sources = {split: s.name for split, s in sets.items()}
    encoded = encode_sets(loaded, pairs, max_length, sources)
    torch.manual_seed(seed)

    t_forward = time.perf_counter()
    stats = {split: channel_stats(loaded, encoded[split], positions=positions, batch_size=batch_size,
                                  padding_side=padding_side, progress=progress, phase=f"forward {split}")
             for split in SPLITS}
    for split in SPLITS:
        if all(s.n < 2 for s in stats[split].values()):
            raise DataError(f"the {split} set has fewer than 2 counted tokens ({positions} positions); "
                            "check that its responses are not empty")

    t_score = time.perf_counter()
    if progress:
        progress("scoring", 0, 1)
    scores = {split: block_scores(loaded, stats[split]) for split in SPLITS}
    units = _units_table(scores)
    units["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(),
                             thresholds)
    means = {f"{split}.{key}": s.mean.float().cpu() for split in SPLITS for key, s in stats[split].items()}
    variances = {f"{split}.{key}": s.var.float().cpu() for split in SPLITS for key, s in stats[split].items()}
    if progress:
        progress("scoring", 1, 1)
    t_end = time.perf_counter()

    datasets = {split: {"name": s.name, "hash": s.content_hash(), "source": s.source, "samples": len(s.pairs),
                        "tokens_counted": int(next(iter(stats[split].values())).n)}
                for split, s in sets.items()}
    load_seconds = loaded.load_seconds
    manifest = {
        "model": loaded.describe(),
        "datasets": datasets,
        "thresholds": thresholds.as_dict(),
        "seed": seed,
        "positions": positions,
        "batch_size": batch_size,
        "max_length": max_length,
        "device": str(loaded.device),
        "versions": _versions(),
        "roles": {r: int((units.role == r).sum()) for r in ("SCU", "UCU", "CU", "RU")},
        "timings": {"load": round(load_seconds, 3), "forward": round(t_score - t_forward, 3),
                    "score": round(t_end - t_score, 3), "total": round(t_end - t0 + load_seconds, 3)},
    }
    return Attribution(units, means, manifest, variances=variances)


def _units_table(scores: dict[str, list]) -> pd.DataFrame:
    """One row per unit in canonical order (layer, 'attn' before 'mlp', unit)."""
    parts = []
    for s_block, u_block in zip(scores["safety"], scores["utility"]):
        block = s_block.block
        n = block.n_units
        parts.append(pd.DataFrame({
            "layer": np.full(n, block.layer, dtype=np.int64),
            "module": block.module,
            "unit": np.arange(n, dtype=np.int64),
            "params": block.params.astype(np.int64),
            "score_safety": s_block.score.astype(np.float64),
            "score_utility": u_block.score.astype(np.float64),
            "z_safety": s_block.z.astype(np.float64),
            "z_utility": u_block.z.astype(np.float64),
        }))
    units = pd.concat(parts, ignore_index=True)
    units = units.sort_values(["layer", "module", "unit"], kind="stable").reset_index(drop=True)
    return units


def attribute_builtin(loaded: LoadedModel, *, samples: int = 128, seed: int = 0,
                      thresholds: Thresholds = Thresholds(), progress: Progress | None = None) -> Attribution:
    """`attribute` on the built-in calibration sets: `samples` pairs of advbench-refusals (AdvBench #101-520 with
    refusals) and of benign-answers, drawn with `seed`."""
    safety = load_pairs("advbench-refusals", samples=samples, seed=seed)
    utility = load_pairs("benign-answers", samples=samples, seed=seed)
    return attribute(loaded, safety, utility, thresholds=thresholds, seed=seed, progress=progress)


def self_answered(loaded: LoadedModel, calibration: CalibrationSet, max_new_tokens: int, batch_size: int,
                  progress: Progress | None) -> CalibrationSet:
    """The same prompts answered by the model under study (greedy)."""
    prompts = [p.prompt for p in calibration.pairs]
    replies = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                       phase=f"answering {calibration.name}")
    pairs = tuple(Pair(p, r) for p, r in zip(prompts, replies))
    return CalibrationSet(f"{calibration.name}+self", pairs, f"{calibration.source}; responses by the model")


@dataclass
class RunFolder:
    """A saved run folder, read back."""

    folder: Path
    units: pd.DataFrame
    means: dict[str, torch.Tensor]
    manifest: dict
    variances: dict[str, torch.Tensor] | None = None  # None for runs made before variances were saved

    @property
    def tokens(self) -> dict[str, int]:
        """Counted tokens per calibration set (weights of the pooled mean)."""
        return {k: int(v.get("tokens_counted", 1)) for k, v in self.manifest.get("datasets", {}).items()}


def load_run(folder: str | Path) -> RunFolder:
    """Read a run folder written by `attribute`; a missing or broken file is a DataError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such run folder: {folder}")
    paths = {name: folder / name for name in ("units.parquet", "means.safetensors", "manifest.json")}
    for name, path in paths.items():
        if not path.exists():
            raise DataError(f"{folder} is not a run folder: {name} is missing")
    try:
        units = pd.read_parquet(paths["units.parquet"])
    except Exception as e:
        raise DataError(f"{paths['units.parquet']} is not readable Parquet: {e}") from None
    missing = [c for c in UNIT_COLUMNS if c not in units.columns]
    if missing:
        raise DataError(f"{paths['units.parquet']} lacks columns {missing}")
    try:
        means = load_file(str(paths["means.safetensors"]))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{paths['means.safetensors']} is not readable safetensors: {e}") from None
    try:
        manifest = json.loads(paths["manifest.json"].read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{paths['manifest.json']} is not readable JSON: {e}") from None
    variances = None
    if (folder / "variances.safetensors").is_file():
        try:
            variances = load_file(str(folder / "variances.safetensors"))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{folder / 'variances.safetensors'} is not readable safetensors: {e}") from None
    return RunFolder(folder, units, means, manifest, variances)


def calibration_sets(run: RunFolder) -> dict[str, CalibrationSet]:
    """The calibration sets a run was scored on, rebuilt as its manifest records them (name or path, samples,
    seed; with responses="self" the replies saved in responses.jsonl), each checked against the recorded hash."""
    manifest = run.manifest
    saved = None
    if manifest.get("responses") == "self":
        path = run.folder / "responses.jsonl"
        if not path.is_file():
            raise DataError(f"{run.folder} was scored on the model's own replies, but its responses.jsonl is missing")
        saved = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sets = {}
    for split in SPLITS:
        recorded = (manifest.get("datasets") or {}).get(split)
        if not recorded:
            raise DataError(f"the manifest of {run.folder} records no {split} set")
        name = recorded["name"]
        if saved is not None:
            pairs = tuple(Pair(r["prompt"], r["response"]) for r in saved if r.get("split") == split)
            calibration = CalibrationSet(name, pairs, "responses.jsonl")
        elif name.startswith("<"):
            raise DataError(f"the {split} set of {run.folder} was given in memory ({name}); it cannot be read again")
        else:
            calibration = load_pairs(name, samples=recorded.get("samples"), seed=int(manifest.get("seed", 0)))
        if recorded.get("hash") and calibration.content_hash() != recorded["hash"]:
            raise DataError(f"the {split} set {name} is not the one {run.folder} was scored on (its content "
                            "changed since); its statistics cannot be reproduced")
        sets[split] = calibration
    return sets
