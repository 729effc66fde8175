#!/usr/bin/env bash
# Build taskloom's two container images without a daemon, with buildah (vfs storage, chroot isolation):
#   taskloom          the platform: pipeline steps, drift monitor, Feast server, events gateway (images/platform)
#   taskloom-triton   the bundled tritonserver with its python backend and the numpy<2 serving env (images/triton)
# Why this way: no Docker engine and no pullable public base image, so the base is a Debian bookworm
# minbase root filesystem made with debootstrap from this machine's own Debian mirror and imported into
# buildah once (cached). Each image is pushed to a docker-archive tarball; a stamp (hash of its
# Dockerfile, requirement files, package source and build args) skips a rebuild when nothing changed.
# Image names and tags come from src/taskloom/images.py (the components' IMAGE uses the same).
#
#   bash scripts/images.sh            build what changed; print "NAME ARCHIVE IMAGE-ID REF" per image
#   bash scripts/images.sh base       only the debootstrap base
#   TORCH=cuda bash scripts/images.sh platform   the platform with PyPI's CUDA torch
#
# Environment: TASKLOOM_IMAGES_HOME (storage, archives; default ~/.cache/taskloom-images), TORCH (cpu|cuda),
# TASKLOOM_WHEELHOUSE (folder holding the torch CPU wheel; default /opt/wheels when it holds one, else
# the PyTorch CPU index is used), DEBIAN_MIRROR (default: read from the machine's apt sources).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD

IMAGES_HOME=${TASKLOOM_IMAGES_HOME:-$HOME/.cache/taskloom-images}
TORCH=${TORCH:-cpu}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SUITE=bookworm
# python3-distutils: python3.11-venv needs it and debootstrap does not resolve the alternative itself
BASE_PACKAGES=python3.11,python3-venv,python3.11-venv,python3-distutils,libpython3.11,ca-certificates,libgomp1,libstdc++6,zlib1g
BASE_NAME=localhost/taskloom-base:$SUITE

case "$TORCH" in cpu|cuda) ;; *) echo "TORCH=$TORCH: use cpu or cuda" >&2; exit 2 ;; esac
command -v buildah >/dev/null || { echo "buildah not found: apt-get install buildah" >&2; exit 2; }

STORAGE=$IMAGES_HOME/storage
RUNROOT=$IMAGES_HOME/run
POLICY=$IMAGES_HOME/policy.json
PIP_CACHE=$IMAGES_HOME/pip-cache
mkdir -p "$STORAGE" "$RUNROOT" "$PIP_CACHE" "$IMAGES_HOME/stamps"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$POLICY"

CLEANUP=()
cleanup() { local d; for d in "${CLEANUP[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT

bh() { nice -n 10 buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver vfs "$@"; }
has_image() { bh inspect --type image "$1" >/dev/null 2>&1; }
log() { echo "images: $*" >&2; }

debian_mirror() {  # the first Debian URI of this machine's apt sources (deb822 or one-line format)
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i !~ /security/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# -- 1. the base: debootstrap minbase -> one-layer image (cached by its package list and mirror) ----------
build_base() {
  local mirror stamp want tmp ctr
  mirror=$(debian_mirror)
  want=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$mirror" "$(declare -f build_base)" | sha256sum | cut -c1-16)
  stamp=$IMAGES_HOME/stamps/base
  if has_image "$BASE_NAME" && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 2; }
  log "debootstrap --variant=minbase $SUITE from $mirror (once, a few minutes)"
  tmp=$(mktemp -d "$IMAGES_HOME/base.XXXXXX")
  CLEANUP+=("$tmp")
  nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/rootfs" "$mirror" \
    > "$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  # the image carries no package lists, downloaded .debs or logs of the bootstrap
  rm -rf "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/var/cache/apt/archives/*.deb \
    "$tmp"/rootfs/var/cache/apt/*.bin "$tmp"/rootfs/var/log/* "$tmp"/rootfs/debootstrap
  tar -C "$tmp/rootfs" --numeric-owner --xattrs -cf "$tmp/rootfs.tar" .
  ctr=$(bh from --signature-policy "$POLICY" scratch)
  bh add "$ctr" "$tmp/rootfs.tar" / >/dev/null
  bh config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label "org.opencontainers.image.description=Debian $SUITE minbase + python3.11 (taskloom base)" "$ctr"
  bh commit -q --signature-policy "$POLICY" --rm "$ctr" "$BASE_NAME" >/dev/null
  echo "$want" > "$stamp"
  log "base $BASE_NAME ready"
}

# -- 2. the images ------------------------------------------------------------------------------------------
# The package source an image is built from, staged into a clean context (no venvs, caches or runs):
# exactly the files the stamp hashes.
CONTEXT_PATHS=(pyproject.toml README.md src components pipelines serving requirements)

stage_context() {  # stage_context DIR
  local dir=$1
  rm -rf "$dir"; mkdir -p "$dir"
  tar -C "$ROOT_DIR" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude=compiled \
    -cf - "${CONTEXT_PATHS[@]}" | tar -C "$dir" -xf -
}

tree_hash() {  # content hash of a folder: every file's path and bytes
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

wheelhouse() {  # the folder holding torch's CPU wheel, or "" (then the PyTorch CPU index serves it)
  local w=${TASKLOOM_WHEELHOUSE-/opt/wheels}
  if [ -n "$w" ] && compgen -G "$w/torch-*+cpu-*.whl" >/dev/null; then echo "$w"; fi
}

build_image() {  # build_image KEY NAME REF
  local key=$1 name=$2 ref=$3 dockerfile=images/$1/Dockerfile
  local ctx=$IMAGES_HOME/context/$key archive=$IMAGES_HOME/$name.tar stamp=$IMAGES_HOME/stamps/$key
  local wheels want mounts=() start
  wheels=$(wheelhouse)
  stage_context "$ctx"
  want=$(printf '%s\n' "$(sha256sum < "$dockerfile")" "$(tree_hash "$ctx")" "TORCH=$TORCH" "REF=$ref" \
           "wheels=${wheels:+$(ls "$wheels"/torch-*+cpu-*.whl | xargs -n1 basename)}" "$(cat "$IMAGES_HOME/stamps/base")" \
         | sha256sum | cut -c1-16)
  if [ -f "$archive" ] && has_image "$ref" && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "$name: up to date ($ref)"
    return 0
  fi
  mkdir -p "$PIP_CACHE"
  mounts+=(-v "$PIP_CACHE:/root/.cache/pip")
  if [ -n "$wheels" ] && [ "$TORCH" = cpu ]; then mounts+=(-v "$wheels:/wheels:ro"); fi
  # a host whose egress needs extra CAs: its bundle stands in for the image's during this build only
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  fi
  log "$name: building $ref (TORCH=$TORCH${wheels:+, torch from $wheels})"
  start=$SECONDS
  rm -f "$stamp"
  bh bud --isolation chroot --signature-policy "$POLICY" --layers=false \
    --build-arg TORCH="$TORCH" --build-arg BASE="$BASE_NAME" "${mounts[@]}" \
    --label "org.opencontainers.image.title=$name" --label "org.opencontainers.image.version=$(printf %s "$ref" | sed 's/.*://')" \
    --label "io.taskloom.torch=$TORCH" --label "io.taskloom.inputs=$want" \
    -f "$ROOT_DIR/$dockerfile" -t "$ref" "$ctx" >&2
  rm -f "$archive.partial"
  bh push --signature-policy "$POLICY" "$ref" "docker-archive:$archive.partial:$ref" >&2
  mv "$archive.partial" "$archive"
  bh rmi --prune >/dev/null 2>&1 || true   # the image this one replaced (vfs keeps full copies)
  echo "$want" > "$stamp"
  log "$name: built in $((SECONDS - start)) s ($(du -h "$archive" | cut -f1))"
}

image_digest() {  # the image ID: the sha256 of its config, which the docker-archive keeps (docker load shows it)
  echo "sha256:$(bh inspect --type image --format '{{.FromImageID}}' "$1")"
}

ref_of() {  # the ref that taskloom.images printed for image NAME
  local line n r
  for line in "${REFS[@]}"; do
    read -r n r <<< "$line"
    if [ "$n" = "$1" ]; then echo "$r"; fi
  done
}

main() {  # main [all|base|platform|triton]: build what changed, print "NAME ARCHIVE IMAGE-ID REF" per image
  mapfile -t REFS < <(PYTHONPATH=src "$PY" -m taskloom.images)   # "NAME REF" per image, from taskloom.images
  local what=${1:-all} todo key name ref PLATFORM_REF TRITON_REF
  PLATFORM_REF=$(ref_of taskloom)
  TRITON_REF=$(ref_of taskloom-triton)
  [ -n "$PLATFORM_REF" ] && [ -n "$TRITON_REF" ] || { echo "taskloom.images printed no refs" >&2; exit 1; }

  case "$what" in
    base) build_base; return 0 ;;
    platform) todo=(platform) ;;
    triton) todo=(triton) ;;
    all) todo=(platform triton) ;;
    *) echo "usage: scripts/images.sh [all|base|platform|triton]" >&2; exit 2 ;;
  esac
  build_base
  for key in "${todo[@]}"; do
    case "$key" in
      platform) name=taskloom; ref=$PLATFORM_REF ;;
      triton) name=taskloom-triton; ref=$TRITON_REF ;;
    esac
    build_image "$key" "$name" "$ref"
    echo "$name $IMAGES_HOME/$name.tar $(image_digest "$ref") $ref"
  done
}

# one line, parsed whole before it runs: editing this file during a build cannot derail it
main "$@"; exit $?
