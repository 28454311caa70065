#!/usr/bin/env bash
# The main job on a fresh machine with no internet: set up, then index a caption bank and rank
# audio clips for an image (and images for an audio clip) with `ucl`.
#
# Real weights cannot be downloaded here, so this uses RANDOM-WEIGHT stand-ins of the default
# models (same architectures and file names, written by scripts/make_test_models.py): the
# pipeline is the real one, the rankings are meaningless, and every command says so on stderr
# ("random weights: rankings are meaningless"). With real weights in your model cache
# (`ucl models fetch` on a connected machine), drop HF_HOME below and the same commands are real.
# stdout carries only the two queries' results; setup, progress and warnings go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[cpu]' scikit-image
demo=.demo
mkdir -p "$demo"
export HF_HOME="$PWD/$demo/models" UCL_HOME="$PWD/$demo/home"
[ -d "$HF_HOME/hub" ] || .venv/bin/python scripts/make_test_models.py "$HF_HOME"
.venv/bin/python scripts/make_demo_media.py "$demo/media"
.venv/bin/ucl index --bank captions examples/captions.txt
.venv/bin/ucl query "$demo/media/images/astronaut.png" --candidates "$demo/media/audio" \
    --bank captions --top 5 --explain 2 --format table
.venv/bin/ucl query "$demo/media/audio/tone_440.wav" --candidates "$demo/media/images" \
    --bank captions --top 3 --format jsonl
