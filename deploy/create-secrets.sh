#!/usr/bin/env bash
# Create (or update) the Secrets helm-values.yaml refers to, from your environment: no value is written to a file.
#
#   export OPENAI_API_KEY=sk-...                                      # secret openai-credentials
#   export DATABASE_URL=postgresql+psycopg2://finetune:...@host/db    # secret finetune-database
#   export REDIS_URL=redis://:...@redis-host:6379/0                   # optional, also in finetune-database
#   export DAGSTER_PG_PASSWORD=...                                    # secret dagster-postgresql-secret
#   NAMESPACE=dagster deploy/create-secrets.sh
#
# OPENAI_API_KEY is required by the OpenAI backend only; with `backend: local` any placeholder will do.
set -euo pipefail

NAMESPACE="${NAMESPACE:-dagster}"
: "${OPENAI_API_KEY:?export OPENAI_API_KEY (any placeholder while backend is local)}"
: "${DATABASE_URL:?export DATABASE_URL, the platform's Postgres (postgresql+psycopg2://user:password@host:5432/db)}"
: "${DAGSTER_PG_PASSWORD:?export DAGSTER_PG_PASSWORD, the password of Dagster's own Postgres user}"

apply_secret() {  # name, then KEY=VALUE pairs; a client-side dry run piped to apply makes re-runs update in place
  local name=$1
  shift
  local literals=()
  for pair in "$@"; do literals+=("--from-literal=$pair"); done
  kubectl create secret generic "$name" --namespace "$NAMESPACE" "${literals[@]}" --dry-run=client -o yaml \
    | kubectl apply --namespace "$NAMESPACE" -f -
}

kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"
apply_secret openai-credentials "OPENAI_API_KEY=$OPENAI_API_KEY"
# REDIS_URL (evaluation cache, routing snapshot) is optional: without it the platform runs uncached.
apply_secret finetune-database "DATABASE_URL=$DATABASE_URL" ${REDIS_URL:+"REDIS_URL=$REDIS_URL"}
apply_secret dagster-postgresql-secret "postgresql-password=$DAGSTER_PG_PASSWORD"
