#!/usr/bin/env bash
# Rehearses the Dockerfile's `api` stage without Docker: builds the wheel the way the `build` stage does, installs
# it with base dependencies only into a throwaway venv, checks torch is absent, then runs `tuneforge migrate`
# and starts `tuneforge api` against SQLite until /ready answers 200.
# Usage: scripts/api-image-smoke.sh [PYTHON]   (needs the package index the Dockerfile would use)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" wheel --no-deps --wheel-dir "$work/wheels" .
"${pip[@]}" install "$work"/wheels/tuneforge-*.whl
if "$work/venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "FAIL: the API install pulled in torch" >&2; exit 1
fi

export TUNEFORGE_DATA_DIR="$work/data"
cd "$work"  # away from the source tree, so only the installed wheel is importable
"$work/venv/bin/tuneforge" migrate
port=$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$work/venv/bin/tuneforge" api --host 127.0.0.1 --port "$port" > "$work/api.log" 2>&1 &
pid=$!
for _ in $(seq 1 60); do
  if "$work/venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/ready', timeout=2)" 2>/dev/null; then
    echo "OK: wheel installs without torch, migrates, and the API answers /ready on port $port"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
echo "FAIL: the API did not become ready" >&2
cat "$work/api.log" >&2
exit 1
