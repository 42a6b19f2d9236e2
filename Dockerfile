# User-code image for the Dagster Helm chart: serves finetune_assets.definitions over gRPC on port 3030.
#
#   docker build -t finetune-assets:0.1.0 .
#       no training stack: sensors, SQL steps and the OpenAI path only (smallest image)
#   docker build --build-arg EXTRAS=local -t finetune-assets:0.1.0-local .
#       + the local training stack (transformers, PEFT) on CPU torch from TORCH_INDEX_URL
#   docker build --build-arg EXTRAS=local --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#       -t finetune-assets:0.1.0-gpu .
#       GPU variant: CUDA torch (the CUDA runtime ships in the wheels; nodes need the NVIDIA driver and device
#       plugin). Pick the CUDA build your nodes' driver supports (pytorch.org "Get started").
FROM python:3.11-slim

ARG EXTRAS=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    FINETUNE_CONFIG=/etc/finetune/pipeline_config.yaml \
    FINETUNE_STATE_DIR=/var/lib/finetune
WORKDIR /app

# Dependency layer: built from pyproject.toml alone (with an empty package), so a code change reuses it.
# torch comes from TORCH_INDEX_URL when the local extra is installed (its +cpu / +cuXXX builds rank above PyPI's).
COPY pyproject.toml README.md ./
RUN mkdir -p finetune_assets && touch finetune_assets/__init__.py \
 && if [ -n "$EXTRAS" ]; then pip install --extra-index-url "$TORCH_INDEX_URL" ".[${EXTRAS}]"; \
    else pip install .; fi \
 && pip uninstall -y finetune-assets \
 && rm -rf finetune_assets

# Code layer.
COPY finetune_assets ./finetune_assets
COPY pipeline_config.yaml workspace.yaml ./
RUN pip install --no-deps . \
 && groupadd --gid 10001 dagster && useradd --create-home --uid 10001 --gid 10001 dagster \
 && mkdir -p "$DAGSTER_HOME" /etc/finetune "$FINETUNE_STATE_DIR" \
 && cp pipeline_config.yaml "$FINETUNE_CONFIG" \
 && chown -R dagster:dagster "$DAGSTER_HOME" "$FINETUNE_STATE_DIR"

# Non-root (uid 10001, as helm-values.yaml's securityContext expects).
USER 10001:10001
EXPOSE 3030
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["dagster", "api", "grpc-health-check", "-p", "3030"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "finetune_assets.definitions", "-a", "defs"]
