#!/usr/bin/env bash
# Render the compiled pipeline as Pipeline/PipelineVersion manifests and push
# them to the branch Argo CD's soraflow-pipelines Application tracks.
#   infra/gitops/publish-manifests.sh pipelines/compiled/soraflow.yaml kfp-manifests
# The branch holds only rendered manifests (under pipelines/); earlier versions
# stay, because runs refer to them and PipelineVersions are immutable.
set -euo pipefail

COMPILED="$(realpath "$1")"
BRANCH="$2"
REPO_ROOT="$(git rev-parse --show-toplevel)"
WORKTREE="$(mktemp -d)"
trap 'git -C "$REPO_ROOT" worktree remove --force "$WORKTREE" 2>/dev/null || true' EXIT

if git ls-remote --exit-code --heads origin "$BRANCH" >/dev/null; then
  git fetch --depth=1 origin "$BRANCH"
  git worktree add "$WORKTREE" "origin/$BRANCH"
else
  # First publication: an orphan branch, so it carries no source history.
  git worktree add --detach "$WORKTREE"
  git -C "$WORKTREE" checkout -q --orphan "$BRANCH"
  git -C "$WORKTREE" rm -rfq --ignore-unmatch .
fi

python "$REPO_ROOT/infra/gitops/render_kfp_manifests.py" "$COMPILED" \
  --out-dir "$WORKTREE/pipelines" \
  --display-name "${GITHUB_SHA:-$(git rev-parse HEAD)}" \
  --code-source-url "${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-local}/commit/${GITHUB_SHA:-$(git rev-parse HEAD)}"

git -C "$WORKTREE" add pipelines
if git -C "$WORKTREE" diff --cached --quiet; then
  echo "pipeline unchanged: no new PipelineVersion"
  exit 0
fi
git -C "$WORKTREE" -c user.name="soraflow-ci" -c user.email="soraflow-ci@users.noreply.github.com" \
  commit -qm "kfp manifests for ${GITHUB_SHA:-$(git rev-parse HEAD)}"
git -C "$WORKTREE" push origin "HEAD:refs/heads/$BRANCH"
