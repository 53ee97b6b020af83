#!/usr/bin/env bash
# Run a command while the private KFP API is port-forwarded to localhost:8888.
#   infra/gitops/with-kfp-api.sh soraflow submit --host http://localhost:8888 ...
# Needs kubectl credentials (gcloud container clusters get-credentials --dns-endpoint)
# and the RBAC of infra/gitops/cluster/rbac-ci.yaml.
set -euo pipefail

NAMESPACE="${KFP_NAMESPACE:-kubeflow}"
PORT="${KFP_LOCAL_PORT:-8888}"

kubectl -n "$NAMESPACE" port-forward svc/ml-pipeline "${PORT}:8888" >/tmp/kfp-port-forward.log 2>&1 &
PF_PID=$!
# Stop only the port-forward this script started.
trap 'kill "$PF_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 30); do
  if curl -fsS "http://localhost:${PORT}/apis/v2beta1/healthz" >/dev/null 2>&1; then
    "$@"
    exit $?
  fi
  if ! kill -0 "$PF_PID" 2>/dev/null; then
    echo "kubectl port-forward exited:" >&2
    cat /tmp/kfp-port-forward.log >&2
    exit 1
  fi
  sleep 2
done
echo "KFP API did not answer on localhost:${PORT} within 60 s" >&2
cat /tmp/kfp-port-forward.log >&2
exit 1
