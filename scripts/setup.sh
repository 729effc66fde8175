#!/usr/bin/env bash
# Create (or bring up to date) the two environments taskloom needs, from registry packages only:
#   .venv          the platform: taskloom, torch, transformers, peft, kfp, feast, great-expectations
#   .venv-triton   the Triton server's python backend: numpy<2, torch, transformers (its own image in a cluster)
# Idempotent: a stamp records the hash of the requirement files; nothing reinstalls when it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet=(-q --disable-pip-version-check)

stamp_of() { cat requirements/*.txt scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16; }
want=$(stamp_of)

make_env() {  # make_env DIR REQUIREMENTS
  local dir=$1 req=$2
  if [ -f "$dir/.taskloom-stamp" ] && [ "$(cat "$dir/.taskloom-stamp")" = "$want" ]; then
    return 0
  fi
  echo "setting up $dir (one time, a few minutes)" >&2
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install "${quiet[@]}" --upgrade pip
  "$dir/bin/pip" install "${quiet[@]}" torch==2.13.0     # first and alone: the CPU wheel, never a CUDA build
  "$dir/bin/pip" install "${quiet[@]}" -r "$req"
  "$dir/bin/pip" install "${quiet[@]}" --no-deps -e . 2>/dev/null
  echo "$want" > "$dir/.taskloom-stamp"
}

make_env .venv requirements/platform.txt
if [ "$(cat .venv/.taskloom-corpora 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install "${quiet[@]}" --no-deps -r requirements/corpora-nodeps.txt
  echo "$want" > .venv/.taskloom-corpora
fi
make_env .venv-triton requirements/serving.txt
