FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN scripts/dev setup
ENV PATH=/app/.venv/bin:$PATH
CMD ["ssah", "--help"]
