#!/usr/bin/env bash
# Checks the deployment files offline (there is no cluster or Docker engine in CI):
# - the kustomize overlay renders (`kubectl kustomize`, when kubectl is installed; otherwise
#   every file a kustomization names must exist);
# - every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate,
#   strict; KEDA's custom resources have no schema there and are reported as such);
# - every AIRCALL_INGEST_* variable the manifests, the compose file and the Dockerfile set is a
#   real setting of the service (checked against `aircall-ingest config`).
set -euo pipefail
cd "$(dirname "$0")/.."

PATH="$PATH:$(python3 -m site --user-base)/bin"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "[manifests] installing kubernetes-validate" >&2
  python3 -m pip install --quiet --user kubernetes-validate \
    || python3 -m pip install --quiet --user --break-system-packages kubernetes-validate
fi
cargo build --locked --quiet
python3 deploy/check_manifests.py target/debug/aircall-ingest
