// The options of one subcommand, declared once: name, value kind, help line, default and checks.
//
// Read me first:
// - A declaration binds an option to the variable it sets (a field of a library options struct:
//   MethodOptions::step, TrainingOptions::steps, ...). The default the help text shows is that
//   variable's value when it is declared, so it is the library's own default unless the command
//   overrides the field in plain sight before declaring it; help, parsing and defaults cannot drift.
// - The help text (`help()`) and its JSON form (`declarations_json()`, printed by
//   `nwc <command> --help --json`) are generated from the declarations, as are the checks:
//   required options, options that need another one or exclude others, options that apply to some
//   --method values only, numeric bounds, choices.
// - Every table also holds the options every subcommand has, --json and --help (-h); they are
//   handled here, in one place (commands.hpp runs them).
// - Syntax: `--name value` or `--name=value`, flags `--name`; a declared short form `-o X`;
//   anything else is positional. Every mistake is a UsageError (exit code 2) naming the option.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace nwc::cli {

/// A usage error: main() prints it with a pointer to the subcommand's help and exits 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class ValueKind { flag, integer, number, text, choice, list };

inline const char* kind_name(ValueKind kind) {
    switch (kind) {
        case ValueKind::flag: return "flag";
        case ValueKind::integer: return "integer";
        case ValueKind::number: return "number";
        case ValueKind::text: return "text";
        case ValueKind::choice: return "choice";
        case ValueKind::list: return "list";
    }
    return "?";
}

/// "a, b or c" (for help lines) and "a,b,c" (defaults of list options).
inline std::string join(const std::vector<std::string>& items, const std::string& separator, const std::string& last_separator) {
    std::string joined;
    for (std::size_t k = 0; k < items.size(); ++k) joined += (k == 0 ? "" : k + 1 == items.size() ? last_separator : separator) + items[k];
    return joined;
}

/// A text that reads back as `value`: "%g" when it does ("0.5", "0.0001", "4"), else the shortest.
inline std::string number_text(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%g", value);
    if (std::strtod(buffer, nullptr) == value) return buffer;
    const auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
    return std::string(buffer, end);
}

/// What a subcommand's help says around its options, and the positional arguments it takes.
struct CommandText {
    std::string name;         ///< "compress"
    std::string usage;        ///< after "nwc compress ": "IN -o OUT.nwc [options]"
    std::string description;  ///< paragraphs, wrapped at 100 columns
    std::string positional;   ///< how messages name a positional argument ("IN", "FILES")
    std::size_t min_positional = 0, max_positional = 0;
    std::string bad_input;    ///< what exit code 1 means for this command
};

/// One declared option. The fluent setters add checks; each is also shown in the help.
struct OptionDeclaration {
    std::string name;        ///< without the dashes
    char short_name = 0;     ///< 'o' for -o, or 0
    ValueKind kind = ValueKind::flag;
    std::string value_name;  ///< "N", "FILE"; empty for flags
    std::string help;
    std::string default_text;  ///< empty: no default (optional input, or required)
    bool required = false;
    std::vector<std::string> choices;   ///< choice and list options: the accepted values
    std::vector<std::string> methods;   ///< applies with these --method values only (empty: any)
    std::vector<std::string> needs;     ///< options that must be given with this one
    std::vector<std::string> excludes;  ///< options that must not be given with this one
    std::string excludes_reason;
    std::optional<double> minimum, maximum;  ///< numeric bounds of the value (each item of a list)
    bool minimum_exclusive = false, maximum_exclusive = false;
    std::function<void(const std::string&)> assign;  ///< parses the value text and sets the variable

    OptionDeclaration& with_short(char letter) { return short_name = letter, *this; }
    OptionDeclaration& mark_required() { return required = true, *this; }
    OptionDeclaration& shows_default(std::string text) { return default_text = std::move(text), *this; }
    OptionDeclaration& at_least(double value) { return minimum = value, minimum_exclusive = false, *this; }
    OptionDeclaration& above(double value) { return minimum = value, minimum_exclusive = true, *this; }
    OptionDeclaration& at_most(double value) { return maximum = value, maximum_exclusive = false, *this; }
    OptionDeclaration& below(double value) { return maximum = value, maximum_exclusive = true, *this; }
    OptionDeclaration& for_methods(std::vector<std::string> names) { return methods = std::move(names), *this; }
    OptionDeclaration& needing(std::string other) { return needs.push_back(std::move(other)), *this; }
    OptionDeclaration& excluding(std::vector<std::string> others, std::string reason) {
        excludes = std::move(others);
        excludes_reason = std::move(reason);
        return *this;
    }

    /// Throws a UsageError unless `value` lies within the declared bounds.
    void check_bounds(double value) const {
        const bool low = minimum && (minimum_exclusive ? !(value > *minimum) : !(value >= *minimum));
        const bool high = maximum && (maximum_exclusive ? !(value < *maximum) : !(value <= *maximum));
        if (low || high) throw UsageError("--" + name + " must be " + bounds_text() + ", got " + number_text(value));
    }
    /// "> 0", ">= 2", "in 12..16", "in (0, 0.5)".
    std::string bounds_text() const {
        if (minimum && maximum)
            return !minimum_exclusive && !maximum_exclusive ? "in " + number_text(*minimum) + ".." + number_text(*maximum)
                                                            : std::string("in ") + (minimum_exclusive ? "(" : "[") + number_text(*minimum) + ", " +
                                                                  number_text(*maximum) + (maximum_exclusive ? ")" : "]");
        if (minimum) return (minimum_exclusive ? "> " : ">= ") + number_text(*minimum);
        if (maximum) return (maximum_exclusive ? "< " : "<= ") + number_text(*maximum);
        return "";
    }
};

/// What parsing found besides the values it assigned.
struct CommandLine {
    bool help = false;
    bool json = false;
    std::vector<std::string> positional;
};

namespace internal {

inline long long parse_integer(const OptionDeclaration& option, const std::string& text, long long lowest, long long highest) {
    long long value = 0;
    const auto [end, status] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || status != std::errc() || end != text.data() + text.size())
        throw UsageError("option --" + option.name + " expects an integer, got '" + text + "'");
    if (value < lowest || value > highest) throw UsageError("option --" + option.name + " is out of range: " + text);
    option.check_bounds(double(value));
    return value;
}

inline double parse_number(const OptionDeclaration& option, const std::string& text) {
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !std::isfinite(value))
        throw UsageError("option --" + option.name + " expects a finite number, got '" + text + "'");
    option.check_bounds(value);
    return value;
}

/// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_list(const std::string& text) {
    std::vector<std::string> items;
    std::size_t start = 0;
    for (std::size_t comma; start <= text.size(); start = comma + 1) {
        comma = text.find(',', start);
        if (comma == std::string::npos) comma = text.size();
        if (comma > start) items.push_back(text.substr(start, comma - start));
    }
    return items;
}

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

}  // namespace internal

/// The declared options of one subcommand (see the header comment).
class OptionTable {
public:
    explicit OptionTable(CommandText text) : m_text(std::move(text)) {
        m_common.push_back(declaration("json", ValueKind::flag, "", "print the result as one JSON object on stdout (with --help: these declarations)"));
        m_common.push_back(declaration("help", ValueKind::flag, "", "this text"));
        m_common.back().short_name = 'h';
    }

    const CommandText& text() const noexcept { return m_text; }

    /// An option with a value, bound to `target` (integer, floating point, string, or std::optional
    /// of one: no default). The default shown is `target`'s value now.
    template <class T>
    OptionDeclaration& value(std::string name, std::string value_name, std::string help, T& target) {
        using Value = std::remove_cvref_t<decltype(value_of(target))>;
        OptionDeclaration& option = add(std::move(name), value_name_kind<Value>(), std::move(value_name), std::move(help));
        if constexpr (!internal::is_optional<T>::value) option.default_text = default_of(target);
        option.assign = [&option, &target](const std::string& text) { target = parse_as<Value>(option, text); };
        return option;
    }

    /// A flag: given, it sets `target` to `when_given`.
    OptionDeclaration& flag(std::string name, std::string help, bool& target, bool when_given = true) {
        OptionDeclaration& option = add(std::move(name), ValueKind::flag, "", std::move(help));
        option.assign = [&target, when_given](const std::string&) { target = when_given; };
        return option;
    }

    /// One of `choices`, bound to `target` (its value now is the default, if it is not empty).
    OptionDeclaration& choice(std::string name, std::string value_name, std::string help, std::string& target, std::vector<std::string> choices) {
        OptionDeclaration& option = add(std::move(name), ValueKind::choice, std::move(value_name), std::move(help));
        option.choices = std::move(choices);
        option.default_text = target;
        option.assign = [&option, &target](const std::string& text) {
            if (std::find(option.choices.begin(), option.choices.end(), text) == option.choices.end())
                throw UsageError("option --" + option.name + " expects " + join(option.choices, ", ", " or ") + ", got '" + text + "'");
            target = text;
        };
        return option;
    }

    /// A comma-separated list of names (of `choices`, when given) or of numbers.
    OptionDeclaration& list(std::string name, std::string value_name, std::string help, std::vector<std::string>& target,
                            std::vector<std::string> choices = {}) {
        OptionDeclaration& option = add(std::move(name), ValueKind::list, std::move(value_name), std::move(help));
        option.choices = std::move(choices);
        option.default_text = join(target, ",", ",");
        option.assign = [&option, &target](const std::string& text) {
            target = internal::split_list(text);
            for (const std::string& item : target)
                if (!option.choices.empty() && std::find(option.choices.begin(), option.choices.end(), item) == option.choices.end())
                    throw UsageError("option --" + option.name + ": unknown value '" + item + "' (" + join(option.choices, ", ", " or ") + ")");
        };
        return option;
    }
    OptionDeclaration& list(std::string name, std::string value_name, std::string help, std::vector<double>& target) {
        OptionDeclaration& option = add(std::move(name), ValueKind::list, std::move(value_name), std::move(help));
        std::vector<std::string> defaults;
        for (double item : target) defaults.push_back(number_text(item));
        option.default_text = join(defaults, ",", ",");
        option.assign = [&option, &target](const std::string& text) {
            target.clear();
            for (const std::string& item : internal::split_list(text)) target.push_back(internal::parse_number(option, item));
            if (target.empty()) throw UsageError("option --" + option.name + " needs at least one value");
        };
        return option;
    }

    /// An option whose caller sets `assign` and `default_text` itself (a value the library reads
    /// through a function, as a method's rate knob).
    OptionDeclaration& custom(std::string name, ValueKind kind, std::string value_name, std::string help) {
        return add(std::move(name), kind, std::move(value_name), std::move(help));
    }

    /// Options set by `--method` apply to some methods only: `method` is the variable it sets.
    void selects_method(const std::string& method) { m_method = &method; }

    bool given(const std::string& name) const { return m_given.count(name) > 0; }

    /// Parses `arguments`, assigning every option given, then checks positional count, required
    /// options, needs / excludes and method scopes. With --help (or -h) anywhere it assigns nothing
    /// and returns help = true, whatever else is wrong with the line. (options.cpp)
    CommandLine parse(const std::vector<std::string>& arguments);

    /// The help text: usage, description, one line per option (generated), exit codes. (options.cpp)
    std::string help() const;
    /// The declarations as JSON (`nwc <command> --help --json`). (options.cpp)
    nlohmann::json declarations_json() const;
    /// Every declaration, the common --json and --help last.
    std::vector<const OptionDeclaration*> declarations() const {
        std::vector<const OptionDeclaration*> all;
        for (const auto& option : m_options) all.push_back(&option);
        for (const auto& option : m_common) all.push_back(&option);
        return all;
    }

private:
    template <class T>
    static const T& value_of(const T& target) { return target; }
    template <class T>
    static const T& value_of(const std::optional<T>&) { static const T none{}; return none; }

    template <class Value>
    static ValueKind value_name_kind() {
        if constexpr (std::is_integral_v<Value>) return ValueKind::integer;
        else if constexpr (std::is_floating_point_v<Value>) return ValueKind::number;
        else return ValueKind::text;
    }
    template <class Value>
    static std::string default_of(const Value& value) {
        if constexpr (std::is_integral_v<Value>) return std::to_string(value);
        else if constexpr (std::is_floating_point_v<Value>) return number_text(double(value));
        else return value;
    }
    template <class Value>
    static Value parse_as(const OptionDeclaration& option, const std::string& text) {
        if constexpr (std::is_integral_v<Value>) {
            using Limits = std::numeric_limits<Value>;
            const long long highest = std::uint64_t(Limits::max()) > std::uint64_t(std::numeric_limits<long long>::max()) ? std::numeric_limits<long long>::max()
                                                                                                             : (long long)(Limits::max());
            return Value(internal::parse_integer(option, text, (long long)(Limits::min()), highest));
        } else if constexpr (std::is_floating_point_v<Value>) {
            return Value(internal::parse_number(option, text));
        } else {
            return text;
        }
    }

    OptionDeclaration& add(std::string name, ValueKind kind, std::string value_name, std::string help) {
        for (const auto* existing : declarations())
            if (existing->name == name) throw std::logic_error("nwc " + m_text.name + ": option --" + name + " declared twice");
        m_options.push_back(declaration(std::move(name), kind, std::move(value_name), std::move(help)));
        return m_options.back();
    }
    static OptionDeclaration declaration(std::string name, ValueKind kind, std::string value_name, std::string help) {
        OptionDeclaration option;
        option.name = std::move(name);
        option.kind = kind;
        option.value_name = std::move(value_name);
        option.help = std::move(help);
        return option;
    }
    const OptionDeclaration* find(const std::string& name) const {
        for (const auto* option : declarations())
            if (option->name == name) return option;
        return nullptr;
    }
    void check_relations(const CommandLine& line) const;

    CommandText m_text;
    std::deque<OptionDeclaration> m_options;  // a deque: declarations keep their address (assign captures it)
    std::deque<OptionDeclaration> m_common;
    std::set<std::string> m_given;
    const std::string* m_method = nullptr;
};

}  // namespace nwc::cli
