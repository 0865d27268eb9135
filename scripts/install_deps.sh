#!/usr/bin/env bash
# Installs the Debian packages nwc needs to build, test and benchmark, if any is missing.
#
#   scripts/install_deps.sh            cmake, ninja, g++, Eigen, xsimd, Catch2, Google Benchmark,
#                                      nlohmann-json, ccache, git
#   scripts/install_deps.sh --clang    the same plus clang and its sanitizer runtimes (libFuzzer:
#                                      libclang-rt-dev, only "recommended" by clang, so named here)
#
# Idempotent: it asks dpkg-query first and runs apt-get (update + install) only when a package is
# missing, so a second run costs a fraction of a second and needs no network. It needs root or
# password-less sudo only when something is missing. Exit status: 0 when everything is installed,
# 1 when it cannot install what is missing (not Debian/Ubuntu, no root and no sudo, apt failed).
# NWC_SKIP_DEPS=1 skips the whole check (for machines where the tools come from elsewhere);
# NWC_EXTRA_PACKAGES="a b" adds packages to the list.
set -euo pipefail

packages=(cmake ninja-build g++ libeigen3-dev libxsimd-dev catch2 libbenchmark-dev nlohmann-json3-dev ccache git)
read -r -a extra_packages <<<"${NWC_EXTRA_PACKAGES:-}"
packages+=("${extra_packages[@]}")
for argument in "$@"; do
    case "$argument" in
        --clang) packages+=(clang libclang-rt-dev) ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install_deps.sh: unknown option '$argument' (try --help)" >&2; exit 2 ;;
    esac
done

if [[ "${NWC_SKIP_DEPS:-0}" == 1 ]]; then
    echo "install_deps.sh: NWC_SKIP_DEPS=1, not checking packages"
    exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install_deps.sh: dpkg-query not found: this script knows Debian and Ubuntu only." >&2
    echo "  Install these yourself (or their equivalents), then set NWC_SKIP_DEPS=1:" >&2
    echo "  ${packages[*]}" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
    echo "install_deps.sh: all ${#packages[@]} packages are installed"
    exit 0
fi
echo "install_deps.sh: missing: ${missing[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_deps.sh: apt-get not found; install these packages yourself: ${missing[*]}" >&2
    exit 1
fi
if [[ "$(id -u)" == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install_deps.sh: installing needs root: run as root, or with password-less sudo, or run" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update -q; then
    echo "install_deps.sh: apt-get update failed (no network or no package source?)" >&2
    exit 1
fi
if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    echo "install_deps.sh: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
echo "install_deps.sh: installed ${missing[*]}"
