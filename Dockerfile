# User-code image: serves finetune_assets.definitions over gRPC on port 3030 for the Dagster Helm chart.
# Build: docker build -t finetune-assets:0.1.0 .            (OpenAI backend only, small image)
#        docker build --build-arg EXTRAS=local -t finetune-assets:0.1.0-local .   (+ transformers/PEFT, CPU torch)
FROM python:3.11-slim AS base
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home FINETUNE_CONFIG=/etc/finetune/pipeline_config.yaml \
    FINETUNE_STATE_DIR=/var/lib/finetune
WORKDIR /app

# Dependency layer: only pyproject.toml, so code edits do not reinstall dependencies.
COPY pyproject.toml README.md ./
RUN mkdir -p finetune_assets && touch finetune_assets/__init__.py \
 && pip install --upgrade pip \
 && if [ -n "$EXTRAS" ]; then pip install ".[${EXTRAS}]"; else pip install .; fi \
 && pip uninstall -y finetune-assets

COPY finetune_assets ./finetune_assets
COPY pipeline_config.yaml workspace.yaml ./
RUN pip install --no-deps . \
 && useradd --create-home --uid 10001 dagster \
 && mkdir -p "$DAGSTER_HOME" /etc/finetune "$FINETUNE_STATE_DIR" \
 && cp pipeline_config.yaml /etc/finetune/pipeline_config.yaml \
 && chown -R dagster:dagster "$DAGSTER_HOME" "$FINETUNE_STATE_DIR"
USER dagster
EXPOSE 3030
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD dagster api grpc-health-check -p 3030 || exit 1
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "finetune_assets.definitions"]
