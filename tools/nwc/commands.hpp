// The nwc command line: one file per subcommand (cmd_<name>.cpp), dispatched by main.cpp.
//
// Read me first:
// - A subcommand is a struct (a "command spec") with a Settings type (library options structs,
//   default-constructed, so their defaults are the library's), text() (usage and description),
//   declare(table, settings) (its options, options.hpp) and run(settings, positional, invocation),
//   which returns an Outcome: the result as JSON and as text.
// - command_main<Spec>() is the one place that handles what every subcommand shares: parsing,
//   --help (the generated help; with --json the declarations as JSON), --json (one JSON object on
//   stdout, else the text), and exit codes.
// - Exit codes, for every subcommand: 0 ok, 1 bad input (nwc::error: a corrupt, missing or
//   unsupported file), 2 usage (UsageError: unknown option, missing argument, bad value). main()
//   maps the exceptions.
#pragma once

#include <concepts>
#include <cstdarg>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "options.hpp"

namespace nwc::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_bad_input = 1;
inline constexpr int exit_usage = 2;

/// How a subcommand was asked to report.
struct Invocation {
    bool json = false;

    /// A line of a long run's progress: in text mode part of stdout (printed now), in JSON mode on
    /// stderr, so that stdout holds only the one JSON object.
    void progress(const std::string& text) const {
        std::fputs(text.c_str(), json ? stderr : stdout);
        std::fflush(json ? stderr : stdout);
    }
};

/// What a subcommand produced: printed by command_main() as JSON (--json) or as text.
struct Outcome {
    nlohmann::json json = nlohmann::json::object();
    std::string text;
};

/// printf into a std::string (the text of an Outcome).
[[gnu::format(printf, 2, 3)]] inline void append_format(std::string& out, const char* format, ...) {
    va_list arguments, copy;
    va_start(arguments, format);
    va_copy(copy, arguments);
    const int size = std::vsnprintf(nullptr, 0, format, copy);
    va_end(copy);
    if (size > 0) {
        std::string buffer(std::size_t(size) + 1, '\0');
        std::vsnprintf(buffer.data(), buffer.size(), format, arguments);
        buffer.resize(std::size_t(size));
        out += buffer;
    }
    va_end(arguments);
}

template <class Spec>
concept CommandSpec = requires(OptionTable& table, typename Spec::Settings& settings, const std::vector<std::string>& positional,
                               const Invocation& invocation) {
    { Spec::text() } -> std::convertible_to<CommandText>;
    Spec::declare(table, settings);
    { Spec::run(std::as_const(settings), positional, invocation) } -> std::same_as<Outcome>;
};

/// Parses `arguments` with Spec's declarations and runs it (no --help here: the caller is another
/// command, as `nwc demo` calls compress and decompress with the arguments a user would type).
template <CommandSpec Spec>
Outcome invoke(const std::vector<std::string>& arguments, const Invocation& invocation) {
    typename Spec::Settings settings;
    OptionTable table(Spec::text());
    Spec::declare(table, settings);
    const CommandLine line = table.parse(arguments);
    if (line.help) throw UsageError("--help is not an argument " + table.text().name + " can be invoked with here");
    return Spec::run(settings, line.positional, invocation);
}

/// A subcommand's entry point: --help, --json and the outcome, the same way for every subcommand.
template <CommandSpec Spec>
int command_main(const std::vector<std::string>& arguments) {
    typename Spec::Settings settings;
    OptionTable table(Spec::text());
    Spec::declare(table, settings);
    const CommandLine line = table.parse(arguments);
    if (line.help) {
        const std::string help = line.json ? table.declarations_json().dump(2) + "\n" : table.help();
        std::fputs(help.c_str(), stdout);
        return exit_ok;
    }
    const Invocation invocation{line.json};
    const Outcome outcome = Spec::run(settings, line.positional, invocation);
    const std::string output = line.json ? outcome.json.dump(2) + "\n" : outcome.text;
    std::fputs(output.c_str(), stdout);
    return exit_ok;
}

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

/// `nwc compress` / `nwc decompress` with these arguments, for `nwc demo`.
Outcome invoke_compress(const std::vector<std::string>& arguments, const Invocation& invocation);
Outcome invoke_decompress(const std::vector<std::string>& arguments, const Invocation& invocation);

}  // namespace nwc::cli
