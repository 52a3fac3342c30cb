#!/usr/bin/env bash
# Create (or reuse) the project venv and install vcm_d2 with pinned dependencies.
#
# Why this script exists: detectron2 is not on PyPI under its own name. PyPI's
# `sal-detectron2==0.7.2` carries the official detectron2 Python sources, but is tagged
# cp310 and also installs a top-level `tools` package and a cp310-only `_C` extension.
# We verify its sha256 and repack only `detectron2/` (no `_C`) into a pure-Python wheel
# named `detectron2`. If `import detectron2` already works in the venv (e.g. a user who
# built official detectron2 with CUDA), that installation is kept.
#
# A stamp file keyed on this script, requirements.txt, setup.py and this checkout's path makes
# a second run install nothing (a venv shared with another clone re-points vcm_d2 here).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VCM_VENV:-.venv}
PY=${PYTHON:-python3}
D2_PKG=sal-detectron2==0.7.2
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

stamp_key=$( (cat "$0" requirements.txt setup.py; pwd) | sha256sum | cut -c1-16)
stamp="$VENV/.vcm_d2_installed_$stamp_key"
if [ -f "$stamp" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

echo "[install_deps] installing pinned requirements into $VENV (first run only)"
pip install -q -r requirements.txt 2> >(grep -v "WARNING: Location" >&2)

if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  echo "[install_deps] building a pure-Python detectron2 wheel from $D2_PKG"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  pip download -q --no-deps --only-binary=:all: --python-version 3.10 --platform any \
    -d "$work/dl" "$D2_PKG"
  whl=$(ls "$work"/dl/*.whl)
  echo "$D2_SHA256  $whl" | sha256sum -c --quiet - || {
    echo "[install_deps] sha256 mismatch for $whl" >&2; exit 1; }
  "$VENV/bin/python" -m wheel unpack -d "$work/src" "$whl" >/dev/null
  root=$(ls -d "$work"/src/*)
  rm -rf "$root/tools" "$root"/detectron2/_C*.so
  info=$(ls -d "$root"/*.dist-info)
  new_info="$root/detectron2-0.7.2.dist-info"
  mv "$info" "$new_info"
  # METADATA: rename and drop the pins (numpy<2, black, tensorboard); real needs are in
  # requirements.txt.
  sed -i -e 's/^Name: .*/Name: detectron2/' -e '/^Requires-Dist:/d' "$new_info/METADATA"
  printf 'Wheel-Version: 1.0\nGenerator: vcm_d2-install\nRoot-Is-Purelib: true\nTag: py3-none-any\n' \
    > "$new_info/WHEEL"
  echo detectron2 > "$new_info/top_level.txt"
  rm -f "$new_info/RECORD"
  # Rename the unpacked folder so `wheel pack` names the wheel detectron2-0.7.2.
  mv "$root" "$work/src/detectron2-0.7.2"
  mkdir -p "$work/out"
  "$VENV/bin/python" -m wheel pack "$work/src/detectron2-0.7.2" -d "$work/out" >/dev/null
  pip install -q --no-deps "$work"/out/detectron2-0.7.2-py3-none-any.whl
fi

pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import detectron2, compressai, av, vcm_d2" 
rm -f "$VENV"/.vcm_d2_installed_*
touch "$stamp"
echo "[install_deps] done"
