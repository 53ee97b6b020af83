#!/usr/bin/env bash
# Re-resolve the project's dependencies (pyproject.toml, extras test) in a fresh Python 3.11 venv and write
# constraints.txt from it. Run after changing a dependency; review the diff: every changed version can change
# the bytes of a curated dataset (then re-pin it: python scripts/pin_demo_data.py --root DIR --pin).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "constraints.txt is for Python 3.11"'
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q torch==2.13.0
"$tmp/venv/bin/python" -m pip install -q -e '.[test]'
{
  sed -n '1,/^[^#]/p' constraints.txt | grep '^#'
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' \
    | sed 's/$/ ; python_version == "3.11"/'
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
