"""Service settings, read from the environment (prefix `SSAH_`), e.g. `SSAH_DATABASE_URL`, `SSAH_MODEL_ROOTS`.

Lists accept JSON (`["/models", "/scratch"]`) or a comma-separated string (`/models,/scratch`).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUILTIN_DEFAULT_MODEL = "smollm2-135m-safe"


def default_home() -> Path:
    """The same folder the engine caches in: $SSAH_HOME, default ~/.cache/ssah."""
    return Path(os.environ.get("SSAH_HOME") or Path.home() / ".cache" / "ssah")


def _split(value):
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


PathList = Annotated[list[Path], NoDecode]
NameList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything an operator can set; the defaults run a private service on this machine."""

    model_config = SettingsConfigDict(env_prefix="SSAH_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="cache and service folder ($SSAH_HOME)")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file $SSAH_HOME/service/ssah.db")
    results_dir: Path | None = Field(None, description="run folders; default $SSAH_HOME/service/runs")

    runner: Literal["local", "ray", "none"] = Field(
        "local", description="local: one worker process per device; ray: workers are Ray actors on a cluster; "
                             "none: only enqueue (workers live elsewhere)")
    devices: NameList = Field(["auto"], description="one local worker per entry: auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    model_cache_size: int = Field(2, ge=1, le=16, description="models a worker keeps loaded")
    worker_threads: int = Field(0, ge=0, description="CPU threads of a worker's torch; 0: torch's default")

    ray_address: str = Field("", description="Ray cluster the ray runner joins: ray://HEAD:10001, auto or HOST:6379; "
                                             "empty: start a local Ray on this machine")
    ray_workers: int = Field(0, ge=0, description="Ray actors that run jobs; 0: one per GPU of the cluster (one if it "
                                                  "has none)")
    ray_num_gpus: float | None = Field(None, ge=0, description="GPUs each Ray actor asks for; default 1 when the "
                                                               "cluster has GPUs, else 0 (CPU)")
    ray_num_cpus: float = Field(1.0, ge=0, description="CPUs each Ray actor asks for")
    ray_local_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when ray_address is "
                                                               "empty; default: all of this machine's")

    model_roots: PathList = Field([], description="folders inside which local model paths must resolve")
    data_roots: PathList = Field([], description="folders inside which data files must resolve")
    default_model: str = BUILTIN_DEFAULT_MODEL

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str = Field("", description="base URL of share links, e.g. https://ssah.example.org")

    max_samples: int = Field(4096, ge=1)
    max_length: int = Field(8192, ge=2)
    max_batch_size: int = Field(256, ge=1)
    max_limit: int = Field(500, ge=1, description="prompts per evaluation set")
    max_new_tokens: int = Field(512, ge=1)
    max_steps: int = Field(10_000, ge=1, description="fine-tuning steps")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_queued_jobs: int = Field(100, ge=1)
    retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429 when the queue is full")
    max_share_hours: float = Field(24 * 90, gt=0)

    heartbeat_s: float = Field(2.0, gt=0, description="how often a busy worker writes its heartbeat")
    lost_after_s: float = Field(60.0, gt=0, description="a running job whose heartbeat is older is lost")
    max_retries: int = Field(1, ge=0, description="times a job lost with its worker, node or service is queued "
                                                  "again before it fails (GET /jobs/{id} shows its attempts)")
    progress_interval_s: float = Field(0.25, gt=0, description="progress and cancel checks while a job runs")
    preload_engine: bool = Field(True, description="import the engine in the background at start-up")
    pause_at: str = Field("", description="fault injection for drills and tests: a job that reaches a phase starting "
                                          "with this (e.g. 'forward') waits there, its phase saying so, until it is "
                                          "cancelled, its worker dies, or the file $SSAH_HOME/release/JOB_ID appears; "
                                          "empty: off")

    @field_validator("devices", "model_roots", "data_roots", mode="before")
    @classmethod
    def _lists(cls, value):
        return _split(value)

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'service' / 'ssah.db'}"
        if self.results_dir is None:
            self.results_dir = self.home / "service" / "runs"
        if not self.devices:
            raise ValueError("devices must name at least one device")
        return self

    @property
    def runs_dir(self) -> Path:
        assert self.results_dir is not None
        return self.results_dir

    def data_files(self, names) -> dict[str, str]:
        """Where this server reads each data file named relative to its data roots (built-in set names and names
        found in no root are left out: they are read as they are)."""
        found = {}
        for name in names:
            for root in self.data_roots:
                if not Path(name).is_absolute() and (root / name).is_file():
                    found[name] = str((root / name).resolve())
                    break
        return found

    @property
    def finetunes_dir(self) -> Path:
        """Fine-tuned model folders; an implicit model root, so a fine-tuned model can be attributed in turn."""
        return self.runs_dir / "finetunes"

    @property
    def base_url(self) -> str:
        """Where people reach this service (share links are built on it): SSAH_PUBLIC_URL, else the bind address and
        port (the machine's name for a wildcard address such as 0.0.0.0). Never a request's Host header, which the
        client chooses."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = socket.gethostname() if self.host.strip("[]") in ("0.0.0.0", "::", "") else self.host.strip("[]")
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """True when the API is bound to a loopback address: then it runs without tokens."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
