#!/usr/bin/env bash
# One command for the gateway benchmark: direct (fake upstream) vs reference vs gaud-engine [vs LiteLLM].
#   bench/run.sh            full run: 3 interleaved rounds, 5 s steps (~5 min on 2 cores); appends bench/RESULTS.md
#   bench/run.sh --smoke    sanity check: 1 round, 2 s steps (~1 min); prints the table, records nothing
#   bench/run.sh --litellm  also LiteLLM's proxy (its own virtualenv, installed on first use; slow)
# Everything else: bench/run.sh --help. Installs wrk and golang-go with apt-get if they are missing.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$(command -v python || command -v python3)}"
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ! command -v go >/dev/null 2>&1 && [[ ! -x "$HERE/.build/fake-upstream" ]]; then need+=(golang-go); fi
if (( ${#need[@]} )); then
  echo "installing ${need[*]} (apt-get)" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq "${need[@]}" >&2
fi
"$PY" -c 'import engine, aiohttp, uvicorn, uvloop, httptools' 2>/dev/null || {
  echo "run from an environment with gaud-engine installed: pip install -e '.[test]'" >&2; exit 2; }
exec "$PY" "$HERE/compare.py" "$@"
