# One image for every Buzzer process; the command picks the process (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY buzzer ./buzzer
COPY services ./services
COPY gateway ./gateway
COPY lb ./lb
COPY infra ./infra
COPY loadtest ./loadtest
RUN pip install . && useradd --uid 10001 --no-create-home buzzer
USER buzzer
ENTRYPOINT ["buzzer"]
CMD ["--help"]
