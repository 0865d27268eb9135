#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds the Release tree (build/, the same
# configuration as scripts/test.sh, so neither rebuilds for the other) and runs `nwc demo`, which
# compresses the stories260K model, decompresses it and compares perplexities.
# Arguments are passed to `nwc demo` (try --help). Environment: see scripts/common.sh.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$nwc_root"

"$nwc_root/scripts/install_deps.sh"
nwc_configure_release
# Only the command-line tool is needed here; scripts/test.sh builds the rest.
cmake --build "$nwc_build_dir" -j "$nwc_jobs" --target nwc_cli
exec "$nwc_build_dir/tools/nwc" demo "$@"
