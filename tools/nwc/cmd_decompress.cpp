// nwc decompress: not built yet (see the issue that owns it).
#include "commands.hpp"
#include <cstdio>

namespace nwc::cli {
int run_decompress(const std::vector<std::string>&) {
    std::fprintf(stderr, "nwc decompress: not available in this build yet\n");
    return exit_usage;
}
}  // namespace nwc::cli
