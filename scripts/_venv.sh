# Sourced by scripts/docs and scripts/test with one argument, the pyproject extra to install
# ("docs" or "test"). Creates .venv on first use and reuses it afterwards; reinstalls only when
# pyproject.toml changed since the last install of that extra.
#
# torch is installed first, pinned: a plain "torch" requirement would resolve to a multi-GB CUDA
# build. Set TORCH_PIP_ARGS (e.g. "--index-url https://download.pytorch.org/whl/cpu") where the
# CPU wheel is not the one pip finds by default. Packages are installed with --no-compile and then
# byte-compiled by compileall on every core (pip compiles one file at a time): about half a minute
# less on a fresh install, and imports stay fast even where PYTHONDONTWRITEBYTECODE is set.
set -euo pipefail

EXTRA="${1:?usage: . scripts/_venv.sh docs|test}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDUNLEARN_VENV:-$REPO/.venv}"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" \
        2>/dev/null; then
    # shellcheck disable=SC2086
    python -m pip install --no-compile ${TORCH_PIP_ARGS:-} "torch==$TORCH_VERSION"
    INSTALLED=1
fi

STAMP="$VENV/.fedunlearn-$EXTRA.stamp"
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    python -m pip install --no-compile -e "$REPO[$EXTRA]"
    echo "$WANT" > "$STAMP"
    INSTALLED=1
fi
if [ "${INSTALLED:-0}" = 1 ]; then
    python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
        >/dev/null 2>&1 || true
fi

# mkdocs-material (and properdocs, pulled in by mkdocs-gen-files) print a banner about MkDocs 2.0.
export NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
