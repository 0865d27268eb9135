// nwc demo: not built yet (see the issue that owns it).
#include "commands.hpp"
#include <cstdio>

namespace nwc::cli {
int run_demo(const std::vector<std::string>&) {
    std::fprintf(stderr, "nwc demo: not available in this build yet\n");
    return exit_usage;
}
}  // namespace nwc::cli
