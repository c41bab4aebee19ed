#!/usr/bin/env bash
# Build the Windows desk setup, dist/nt8bridge-setup-<version>.exe, on Linux.
#
#   installer/build-windows.sh                 # quick build (zlib; what CI and the tests use)
#   installer/build-windows.sh --release       # lzma solid: smaller, slower to build
#
# Options:
#   --out DIR             where the setup is written (default: dist/)
#   --work DIR            staging folder, rebuilt on every run (default: build/windows/)
#   --sign-command CMD    sign the setup and its uninstaller as makensis writes them: CMD runs once
#                         for each with %1 replaced by the file (default: $NT8BRIDGE_SIGN_COMMAND;
#                         e.g. osslsigncode on Linux, see docs/install-windows.md). Unsigned without.
#   --setup-version V     the version the setup calls itself (default: the package's version); the
#                         wheel inside keeps the package's own version. The tests build a newer
#                         setup this way to test upgrades.
#
# What goes in: the nt8bridge wheel, an offline wheelhouse of every runtime dependency (and
# psycopg[binary] for PostgreSQL) for 64-bit CPython 3.11 and 3.12 on Windows, pip, the NinjaScript
# NT8 compiles (never the simulator), and the docs a desk needs. The setup installs from the
# wheelhouse with --no-index: a desk needs no internet access.
#
# Needs: Python 3.11+ with pip (the checkout's .venv when there is one), makensis (Debian: nsis).
# Downloads go through pip's own cache (PIP_CACHE_DIR, default ~/.cache/pip): a second build asks
# the index what is current and fetches only what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

out="$root/dist"
work="$root/build/windows"
release=0
setup_version=""
sign_command="${NT8BRIDGE_SIGN_COMMAND:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --release) release=1 ;;
        --out) out="$2"; shift ;;
        --work) work="$2"; shift ;;
        --setup-version) setup_version="$2"; shift ;;
        --sign-command) sign_command="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-windows: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "build-windows: [$((SECONDS - started))s] $*" >&2; }
started=$SECONDS
die() { say "$*"; exit 1; }

if ! command -v makensis >/dev/null 2>&1; then
    die "makensis not found: install NSIS 3 (Debian/Ubuntu: apt-get install nsis)"
fi
# Debian's nsis ships 64-bit stubs (in nsis-common); NSIS's own Windows builds ship only 32-bit ones,
# and a 32-bit setup installs the same 64-bit Python environment on 64-bit Windows (not under wine64 alone)
target="amd64-unicode"
nsisdir="$(makensis -HDRINFO 2>/dev/null | tr ',' '\n' | sed -n 's/^NSISDIR=//p' | head -n 1)"
if [[ -n "$nsisdir" && ! -e "$nsisdir/Stubs/zlib-amd64-unicode" ]]; then
    if [[ -e "$nsisdir/Stubs/zlib-x86-unicode" ]]; then
        target="x86-unicode"
        say "makensis has no amd64-unicode stubs in $nsisdir/Stubs: building a 32-bit (x86-unicode) setup"
    else
        die "makensis has no amd64-unicode stubs in $nsisdir/Stubs (Debian/Ubuntu: apt-get install nsis nsis-common)"
    fi
fi

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    for candidate in "$root/.venv/bin/python" "$root/.venv/Scripts/python.exe" python3 python; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            py="$candidate"
            break
        fi
    done
    [[ -n "$py" ]] || die "no Python 3.11+ found (.venv, python3, python): set PYTHON=/path/to/python3.11, or run installer/bootstrap.sh first"
fi
command -v "$py" >/dev/null 2>&1 || die "$py not found; set PYTHON=/path/to/python3.11 (or run installer/bootstrap.sh first)"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$py is older than Python 3.11 (tomllib is needed)"
"$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip (Debian/Ubuntu: apt-get install python3-pip, or run installer/bootstrap.sh)"

stage="$work/stage"
rm -rf "$work"
mkdir -p "$stage/wheelhouse" "$stage/ninjascript" "$stage/docs" "$work/src" "$out"

# --- what the project says: version, runtime requirements, NinjaScript sources ------------------
# Read from pyproject.toml and bridge/nt8/ninjascript.py without importing the package, so the
# build needs none of its dependencies on Linux.
"$py" - "$root" "$work" <<'EOF'
import ast, pathlib, re, sys, tomllib
root, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
init = (root / "bridge" / "__init__.py").read_text(encoding="utf-8")
version = re.search(r'^__version__\s*=\s*"([^"]+)"', init, re.M).group(1)
if version != project["version"]:
    sys.exit(f"build-windows: pyproject.toml says {project['version']}, bridge/__init__.py says {version}")
# the runtime dependencies, the PostgreSQL driver and the console's web server; the train extra stays on
# training machines
extras = project["optional-dependencies"]
reqs = list(project["dependencies"]) + list(extras["postgres"]) + list(extras["console"]) + ["pip"]
(work / "requirements.txt").write_text("\n".join(reqs) + "\n", encoding="utf-8")
(work / "version").write_text(version, encoding="utf-8")
# shipped_sources() is the one definition of what goes to NT8; run it from the file alone
src = (root / "bridge" / "nt8" / "ninjascript.py").read_text(encoding="utf-8")
module = ast.parse(src)
keep = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "shipped_sources"]
namespace = {"NINJASCRIPT": root / "ninjascript", "Path": pathlib.Path}
exec(compile(ast.Module(body=keep, type_ignores=[]), "ninjascript.py", "exec"), namespace)
sources = namespace["shipped_sources"]()
if not sources or any("Simulator" in p.relative_to(root / "ninjascript").parts for p in sources):
    sys.exit(f"build-windows: unexpected NinjaScript sources {sources}")
(work / "ninjascript.txt").write_text(
    "\n".join(p.relative_to(root / "ninjascript").as_posix() for p in sources) + "\n", encoding="utf-8")
EOF
version="$(cat "$work/version")"
setup_version="${setup_version:-$version}"
# Windows' file version is four numbers: the leading numbers of the version, padded
vi_version="$(grep -oE '^[0-9]+(\.[0-9]+){0,3}' <<<"$setup_version" || true)"
[[ -n "$vi_version" ]] || die "setup version $setup_version does not start with a number"
while [[ "$(tr -cd . <<<"$vi_version" | wc -c)" -lt 3 ]]; do vi_version="$vi_version.0"; done
say "nt8bridge $version, setup $setup_version"

# --- the nt8bridge wheel, from a clean copy of the checkout --------------------------------------
# setuptools reuses build/lib of an in-place build, where a module deleted since would still be
# packaged; a copy of what git sees (tracked and new files, not ignored ones) has no such leftovers.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$root" && while IFS= read -r -d '' f; do [[ -f "$f" ]] && printf '%s\0' "$f"; done) |
        tar -C "$root" --null -T - -cf - | tar -C "$work/src" -xf -
else
    tar -C "$root" --exclude=./.venv --exclude=./build --exclude=./dist --exclude=.git -cf - . | tar -C "$work/src" -xf -
fi
say "building the nt8bridge wheel"
"$py" -m pip wheel --quiet --no-deps --disable-pip-version-check -w "$stage/wheelhouse" "$work/src" \
    || die "pip wheel failed for $root"
ls "$stage/wheelhouse"/nt8bridge-"$version"-*.whl >/dev/null 2>&1 || die "no nt8bridge-$version wheel was built"

# --- the wheelhouse: every runtime dependency, 64-bit Windows, CPython 3.11 and 3.12 -------------
download() {  # pyver dest [pip options...]
    local pyver="$1" dest="$2"; shift 2
    "$py" -m pip download --quiet --disable-pip-version-check \
        --platform win_amd64 --python-version "$pyver" --implementation cp --only-binary=:all: \
        -d "$dest" -r "$work/requirements.txt" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
say "downloading the wheelhouse for CPython 3.11 win_amd64"
download 3.11 "$stage/wheelhouse" || die "pip download failed for CPython 3.11 win_amd64 (is the package index reachable?)"
# 3.12 desks get the versions 3.11 desks get, where they exist for 3.12: one set of versions to test
# and to support, not two (a release can drop 3.11 and resolve newer on 3.12 alone)
"$py" - "$stage/wheelhouse" "$work/constraints-3.11.txt" <<'EOF'
import pathlib, re, sys
pins = sorted({re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() + "==" + w.name.split("-")[1]
               for w in pathlib.Path(sys.argv[1]).glob("*.whl") if not w.name.startswith("nt8bridge-")})
pathlib.Path(sys.argv[2]).write_text("\n".join(pins) + "\n", encoding="utf-8")
EOF
say "downloading the wheelhouse for CPython 3.12 win_amd64"
if ! download 3.12 "$stage/wheelhouse" -c "$work/constraints-3.11.txt" 2>"$work/pip-3.12.err"; then
    say "the 3.11 versions do not all exist for 3.12 ($(tail -n 1 "$work/pip-3.12.err")); resolving 3.12 on its own"
    download 3.12 "$stage/wheelhouse" || die "pip download failed for CPython 3.12 win_amd64 (is the package index reachable?)"
fi
# one sdist would make the desk's pip try to build it, without a compiler or internet
if ls "$stage/wheelhouse" | grep -v '\.whl$' >/dev/null; then
    die "the wheelhouse holds files that are not wheels: $(ls "$stage/wheelhouse" | grep -v '\.whl$' | tr '\n' ' ')"
fi
pip_wheel="$(cd "$stage/wheelhouse" && ls pip-*-py3-none-any.whl | sort -V | tail -n 1)"
[[ -n "$pip_wheel" ]] || die "no pip wheel in the wheelhouse"

# --- NinjaScript, docs ----------------------------------------------------------------------------
while IFS= read -r rel; do
    [[ -n "$rel" ]] || continue
    mkdir -p "$stage/ninjascript/$(dirname "$rel")"
    cp "$root/ninjascript/$rel" "$stage/ninjascript/$rel"
done < "$work/ninjascript.txt"
cp "$root/installer/logrun.py" "$stage/logrun.py"
cp "$root/installer/README.md" "$stage/docs/README.md"
cp "$root/docs/install-windows.md" "$root/docs/risk.md" "$stage/docs/"
if compgen -G "$root/docs/img/setup-*.png" >/dev/null; then
    mkdir -p "$stage/docs/img"
    cp "$root"/docs/img/setup-*.png "$stage/docs/img/"
fi

# --- makensis ----------------------------------------------------------------------------------------
# Wheels are zip files already: deflating them again gains nothing and costs minutes, so the quick
# build stores them as they are (zlib for the rest); --release spends the time on lzma solid.
if [[ $release -eq 1 ]]; then compressor="lzma"; else compressor="zlib"; fi
setup="$out/nt8bridge-setup-$setup_version.exe"
say "makensis ($compressor) -> $setup"
nsis_args=(-V2 -INPUTCHARSET UTF8 "-DTARGET=$target"
    "-DVERSION=$setup_version" "-DPKG_VERSION=$version" "-DSTAGE=$stage" "-DOUTFILE=$setup"
    "-DVI_VERSION=$vi_version" "-DPIP_WHEEL=$pip_wheel" "-DCOMPRESSOR=$compressor")
if [[ -n "$sign_command" ]]; then nsis_args+=("-DSIGN_COMMAND=$sign_command"); fi
makensis "${nsis_args[@]}" "$root/installer/nt8bridge.nsi" >&2 || die "makensis failed"

size=$(stat -c %s "$setup")
say "wrote $setup ($((size / 1024 / 1024)) MiB) in $((SECONDS - started)) s"
echo "$setup"
