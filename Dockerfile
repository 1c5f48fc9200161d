# One image for every Buzzer process; the command picks the process (see docker-compose.yml).
# Only the product: the pinned runtime dependencies, no benchmarks, load tests or tests.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY buzzer ./buzzer
COPY services ./services
COPY lb ./lb
COPY infra ./infra
COPY tiers ./tiers
RUN pip install --no-deps . && useradd --uid 10001 --no-create-home buzzer
USER buzzer
ENTRYPOINT ["buzzer"]
CMD ["--help"]
