#!/usr/bin/env bash
# System tools that some tests use (`make demo` needs none of them):
#   prometheus, prometheus-pushgateway (Debian): promtool rule tests and the monitoring integration test
#   chromium (Debian): the test that opens the eval report headless
#   kubectl (Debian kubernetes-client): `kubectl kustomize` builds the monitoring and cluster kustomizations
#   checkov 3.3.30 in its own venv, .venv-checkov/ (it pins old packaging/networkx, so not in .venv)
# Run as root where apt-get exists, it installs what is missing. Otherwise it says what is missing: those
# tests are skipped and pytest's summary (-rs) lists them, naming this script's make target.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A PACKAGE=([promtool]=prometheus [prometheus]=prometheus [prometheus-pushgateway]=prometheus-pushgateway
                    [chromium]=chromium [kubectl]=kubernetes-client)
missing=()
for tool in "${!PACKAGE[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || echo "test-deps: apt-get failed; the tests that need ${missing[*]} will be skipped"
  else
    echo "test-deps: not installed: ${missing[*]} (the tests that need them are skipped;" \
         "'sudo make test-deps' or 'apt-get install ${missing[*]}' enables them)"
  fi
fi

if [ -z "${CHECKOV:-}" ] && ! command -v checkov >/dev/null 2>&1 && [ ! -x .venv-checkov/bin/checkov ]; then
  echo "test-deps: installing checkov 3.3.30 into .venv-checkov/"
  { python3 -m venv .venv-checkov && .venv-checkov/bin/pip install -q "checkov==3.3.30"; } >/dev/null 2>&1 \
    || { rm -rf .venv-checkov; echo "test-deps: checkov could not be installed; its test will be skipped"; }
fi
exit 0
