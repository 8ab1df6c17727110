"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here): the services, their
images or build contexts, the GPU reservation, the database URL, start-up order, shared volumes, and that the API's
environment is settings the service understands; and by `docker compose config` itself where a Compose CLI exists
(a reported skip elsewhere)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from backend.cli import build_parser
from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolated(value: str) -> str:
    """`${NAME:?message}` / `${NAME:-default}` as compose would fill them, with NAME set to 'NAME'."""
    return VARIABLE.sub(lambda m: m.group(1), value)


def mounts(service: dict) -> dict[str, str]:
    """Container path -> volume name or host path."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2] if isinstance(volume, str) else (volume["source"], volume["target"])
        out[target] = source
    return out


def test_the_services_exist_and_each_has_an_image_or_a_build_context_that_exists(services):
    assert {"api", "worker", "ray-head", "postgres"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert context.is_dir() and (context / dockerfile).is_file(), name
        else:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), (name, service["image"])  # a pinned tag
    assert services["postgres"]["image"].startswith("postgres:")


def test_the_dockerfile_builds_the_project_on_python_3_11_slim():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = shlex.split(line)[1:]
            assert all((ROOT / source).exists() for source in sources), line
    run = " ".join(line for line in lines if line.startswith("RUN "))
    assert "scripts/dev setup" in run and "postgres" in run and "ray" in run
    assert (ROOT / "scripts" / "dev").is_file()


def test_the_worker_reserves_an_nvidia_gpu_and_joins_the_ray_head(services):
    worker, head = services["worker"], services["ray-head"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert int(device.get("count", 1)) >= 1 or device.get("count") == "all"
    command = worker["command"]
    assert command[:2] == ["ray", "start"] and "--block" in command
    head_port = next(arg.split("=")[1] for arg in head["command"] if arg.startswith("--port="))
    assert f"--address=ray-head:{head_port}" in command
    assert f"--num-gpus={device.get('count', 1)}" in command
    assert "--head" in head["command"] and "--num-gpus=0" in head["command"]  # jobs land on workers only
    # The cluster's shared secret is the same everywhere (Ray's token authentication).
    tokens = {environment(services[name]).get("RAY_AUTH_TOKEN") for name in ("api", "worker", "ray-head")}
    assert len(tokens) == 1 and None not in tokens
    assert all(environment(services[name]).get("RAY_AUTH_MODE") == "token" for name in ("api", "worker", "ray-head"))


def test_the_api_serves_on_all_interfaces_with_the_ray_runner_on_postgres(services, monkeypatch):
    api, postgres = services["api"], services["postgres"]
    command = api["command"]
    assert command[:2] == ["ssah", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.host == "0.0.0.0"
    assert f"{args.port}:{args.port}" in [str(p) for p in api["ports"]]

    env = environment(api)
    url = make_url(interpolated(env["SSAH_DATABASE_URL"]))
    pg = environment(postgres)
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and (url.port or 5432) == 5432
    assert url.username == pg["POSTGRES_USER"] and url.database == pg["POSTGRES_DB"]
    assert url.password == interpolated(pg["POSTGRES_PASSWORD"])  # the same variable
    ray_address = env["SSAH_RAY_ADDRESS"]
    client_port = next(arg.split("=")[1] for arg in services["ray-head"]["command"]
                       if arg.startswith("--ray-client-server-port="))
    assert ray_address == f"ray://ray-head:{client_port}"

    for name in list(Settings.model_fields):  # the service reads exactly these variables
        monkeypatch.delenv(f"SSAH_{name.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, interpolated(value))
    settings = Settings(host=args.host, port=args.port)  # as `ssah serve` makes them
    assert settings.runner == "ray" and settings.ray_address == ray_address and settings.ray_num_gpus == 1
    assert not settings.loopback and settings.database_url == str(interpolated(env["SSAH_DATABASE_URL"]))
    unknown = {k for k in env if k.startswith("SSAH_") and k.removeprefix("SSAH_").lower() not in Settings.model_fields}
    assert not unknown, f"variables the service does not read: {unknown}"


def test_start_up_waits_for_healthy_postgres_and_ray_head(services):
    for name in ("postgres", "ray-head", "api"):
        assert services[name]["healthcheck"]["test"], name
    for name, needs in (("api", ("postgres", "ray-head")), ("worker", ("ray-head", "postgres"))):
        depends = services[name]["depends_on"]
        for need in needs:
            assert depends[need]["condition"] == "service_healthy", (name, need)
    assert "depends_on" not in services["postgres"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_results_and_the_model_cache_are_shared_volumes_at_the_paths_the_settings_name(compose, services):
    declared = set(compose["volumes"])
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] in declared
    api, worker = mounts(services["api"]), mounts(services["worker"])
    for service, paths in (("api", api), ("worker", worker)):
        env = environment(services[service])
        results, home = env["SSAH_RESULTS_DIR"], env["SSAH_HOME"]
        assert paths[results] in declared and paths[home] in declared, service
    assert api == worker  # the same results, cache and model folders on both sides
    assert environment(services["api"])["SSAH_MODEL_ROOTS"] in api


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin) or the standalone `docker-compose`, whichever answers here."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            return command
    return None


def test_docker_compose_itself_reads_the_file_with_its_secrets_filled_in_and_refuses_it_without():
    """`docker compose config` (no Docker engine needed): the file is valid Compose, variables interpolate to what
    the static checks above assume, and a missing secret stops it with the file's own message."""
    command = compose_command()
    if command is None:
        pytest.skip("no `docker compose` or `docker-compose` here (.ci/run installs Debian's docker-compose); the "
                    "static checks above ran")
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "SSAH_PUBLIC_URL")}
    secrets = {"POSTGRES_PASSWORD": "pg-secret", "RAY_AUTH_TOKEN": "ray-secret"}
    done = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env | secrets,
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"api", "worker", "ray-head", "postgres"} <= set(services)
    api = environment(services["api"])
    assert api["SSAH_DATABASE_URL"] == "postgresql+psycopg://ssah:pg-secret@postgres:5432/ssah"
    assert api["RAY_AUTH_TOKEN"] == environment(services["worker"])["RAY_AUTH_TOKEN"] == "ray-secret"
    assert api["SSAH_PUBLIC_URL"] == "http://localhost:8000"
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    missing = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD in .env" in missing.stderr
