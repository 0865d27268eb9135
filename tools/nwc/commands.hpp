// The nwc command line: one file per subcommand (cmd_<name>.cpp), dispatched by main.cpp.
//
// Exit codes, for every subcommand: 0 ok, 1 bad input (nwc::error: a corrupt or missing file),
// 2 usage (unknown option, missing argument). Every subcommand takes --help and --json.
#pragma once

#include <string>
#include <vector>

namespace nwc::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_bad_input = 1;
inline constexpr int exit_usage = 2;

/// A subcommand: its name, a one-line summary for `nwc --help`, and its entry point, which gets
/// the arguments after the subcommand's name.
struct Command {
    const char* name;
    const char* summary;
    int (*run)(const std::vector<std::string>& arguments);
};

/// All subcommands, in the order `nwc --help` lists them (defined in main.cpp).
const std::vector<Command>& commands();

int run_compress(const std::vector<std::string>& arguments);
int run_decompress(const std::vector<std::string>& arguments);
int run_inspect(const std::vector<std::string>& arguments);
int run_train(const std::vector<std::string>& arguments);
int run_eval(const std::vector<std::string>& arguments);
int run_report(const std::vector<std::string>& arguments);
int run_demo(const std::vector<std::string>& arguments);

}  // namespace nwc::cli
