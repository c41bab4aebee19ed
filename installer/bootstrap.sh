#!/usr/bin/env bash
# Set up this checkout for development and run a command inside it.
#
#   installer/bootstrap.sh nt8bridge demo     # the main job on embedded defaults
#   installer/bootstrap.sh pytest             # the tests
#
# On first use (or when pyproject.toml changes) it creates .venv with Python 3.11+ and installs
# nt8bridge with its dev extras; later calls only run the command. Set PYTHON to choose the
# interpreter. Desks install with the Windows setup instead (docs/install-windows.md; how it is
# built: installer/README.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"

if ! command -v "$py" >/dev/null 2>&1; then
    echo "bootstrap: $py not found; install Python 3.11 or newer, or set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: nt8bridge needs Python 3.11 or newer; $py is $("$py" --version 2>&1)" >&2
    exit 1
fi

stamp="$root/.venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "bootstrap: setting up $root/.venv (a few minutes the first time)" >&2
    "$py" -m venv "$root/.venv"
    "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
    # dev: the tests; train: the ML members and ONNX converters, which the tests train and check;
    # console: the operator console's web server
    "$root/.venv/bin/python" -m pip install --quiet -e "$root[dev,train,console]"
    rm -f "$root"/.venv/.installed-*
    touch "$stamp"
fi

cd "$root"
export PATH="$root/.venv/bin:$PATH"
exec "$@"
