// A small, strict option parser shared by the subcommands.
//
// Options are `--name value` or `--name=value`, flags are `--name`; anything else is positional.
// Unknown options and missing values are usage errors (exit 2) with a message naming the option.
#pragma once

#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace nwc::cli {

/// Thrown for a usage error; main() prints it with the subcommand's help and exits 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Arguments {
public:
    /// `options` take a value, `flags` do not.
    Arguments(const std::vector<std::string>& arguments, std::set<std::string> options, std::set<std::string> flags) {
        for (std::size_t i = 0; i < arguments.size(); ++i) {
            const std::string& argument = arguments[i];
            if (argument.rfind("--", 0) != 0 || argument == "--") {
                m_positional.push_back(argument);
                continue;
            }
            std::string name = argument.substr(2), value;
            const auto equals = name.find('=');
            const bool inline_value = equals != std::string::npos;
            if (inline_value) {
                value = name.substr(equals + 1);
                name = name.substr(0, equals);
            }
            if (flags.count(name)) {
                if (inline_value) throw UsageError("option --" + name + " takes no value");
                m_flags.insert(name);
            } else if (options.count(name)) {
                if (!inline_value) {
                    if (i + 1 >= arguments.size()) throw UsageError("option --" + name + " needs a value");
                    value = arguments[++i];
                }
                m_values[name] = value;
            } else {
                throw UsageError("unknown option --" + name);
            }
        }
    }

    bool flag(const std::string& name) const { return m_flags.count(name) > 0; }
    bool has(const std::string& name) const { return m_values.count(name) > 0; }
    std::string get(const std::string& name, const std::string& fallback = "") const {
        auto found = m_values.find(name);
        return found == m_values.end() ? fallback : found->second;
    }
    double get_number(const std::string& name, double fallback) const {
        if (!has(name)) return fallback;
        const std::string text = get(name);
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0') throw UsageError("option --" + name + " expects a number, got '" + text + "'");
        return value;
    }
    long long get_integer(const std::string& name, long long fallback) const {
        if (!has(name)) return fallback;
        const std::string text = get(name);
        char* end = nullptr;
        const long long value = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0') throw UsageError("option --" + name + " expects an integer, got '" + text + "'");
        return value;
    }
    const std::vector<std::string>& positional() const { return m_positional; }

private:
    std::map<std::string, std::string> m_values;
    std::set<std::string> m_flags;
    std::vector<std::string> m_positional;
};

}  // namespace nwc::cli
