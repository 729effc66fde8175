#!/usr/bin/env bash
# The Debian packages taskloom's own set-up needs. Installs the missing ones with apt-get when run as
# root; otherwise names them and exits 2. Idempotent: with everything present it only looks, and
# prints nothing.
#
#   bash scripts/system-packages.sh          the tests' servers: postgresql (initdb, pg_ctl) and
#                                            redis-server (tests/store/conftest.py)
#   bash scripts/system-packages.sh images   the image build: buildah (no daemon) and debootstrap
#                                            (the base root filesystem), scripts/images.sh
set -euo pipefail

missing=()
case "${1:-tests}" in
  tests)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    [ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1 || missing+=(postgresql)  # runs initdb as root's stand-in
    ;;
  images)
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ;;
  *) echo "error: $1: use tests or images" >&2; exit 2 ;;
esac
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
  exit 2
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
