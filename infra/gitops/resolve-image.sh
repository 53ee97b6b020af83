#!/usr/bin/env bash
# Print IMAGE@sha256:... for the newest commit on HEAD's history that has an
# image in Artifact Registry. Images are tagged by commit (images.yml); a run
# must reference one by digest so a re-tag can never change what it executes.
#   infra/gitops/resolve-image.sh "$AR_REPOSITORY_URL/soraflow-gpu"
# If HEAD itself changed the image inputs, wait for its build (up to WAIT_MINUTES).
set -euo pipefail

IMAGE="$1"
WAIT_MINUTES="${WAIT_MINUTES:-45}"
IMAGE_INPUTS=(docker pyproject.toml models training components pipelines common monitoring)

digest_of() {
  gcloud artifacts docker images describe "${IMAGE}:$1" --format='value(image_summary.digest)' 2>/dev/null || true
}

head_sha="$(git rev-parse HEAD)"
if git rev-parse -q --verify HEAD^ >/dev/null && [ -n "$(git diff --name-only HEAD^ HEAD -- "${IMAGE_INPUTS[@]}")" ]; then
  for _ in $(seq 1 "$WAIT_MINUTES"); do
    d="$(digest_of "$head_sha")"
    if [ -n "$d" ]; then
      echo "${IMAGE}@${d}"
      exit 0
    fi
    echo "waiting for ${IMAGE}:${head_sha} to be pushed..." >&2
    sleep 60
  done
  echo "no image ${IMAGE}:${head_sha} after ${WAIT_MINUTES} min; did images.yml fail?" >&2
  exit 1
fi

for sha in $(git rev-list --max-count=100 HEAD); do
  d="$(digest_of "$sha")"
  if [ -n "$d" ]; then
    echo "${IMAGE}@${d}"
    exit 0
  fi
done
echo "no ${IMAGE} image for any of the last 100 commits; run images.yml first" >&2
exit 1
