// nwc train: not built yet (see the issue that owns it).
#include "commands.hpp"
#include <cstdio>

namespace nwc::cli {
int run_train(const std::vector<std::string>&) {
    std::fprintf(stderr, "nwc train: not available in this build yet\n");
    return exit_usage;
}
}  // namespace nwc::cli
