// OptionTable's parser and its generated help (options.hpp).
#include "options.hpp"

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

namespace nwc::cli {
namespace {

constexpr std::size_t help_width = 100;   // columns of the help text
constexpr std::size_t label_width = 25;   // "  -o, --output FILE" and padding

/// `text` as lines of at most help_width columns; it starts at column `indent`, and so does every
/// line after the first.
std::string wrap(const std::string& text, std::size_t indent) {
    std::string wrapped, word;
    std::size_t column = indent;
    bool line_empty = true;
    const auto flush = [&] {
        if (word.empty()) return;
        if (!line_empty && column + 1 + word.size() > help_width) {
            wrapped += "\n" + std::string(indent, ' ');
            column = indent;
            line_empty = true;
        }
        if (!line_empty) {
            wrapped += ' ';
            ++column;
        }
        wrapped += word;
        column += word.size();
        line_empty = false;
        word.clear();
    };
    for (char c : text) {
        if (c == ' ' || c == '\n') flush();
        else word += c;
    }
    flush();
    return wrapped;
}

std::string option_label(const OptionDeclaration& option) {
    std::string label = option.short_name ? std::string("-") + option.short_name + ", --" + option.name : "--" + option.name;
    if (option.kind != ValueKind::flag) label += " " + option.value_name;
    return label;
}

/// "(--method rtn or gptq only; with --calib; nwc, ecsq, gptq or rtn; default 4)": the parts of
/// a help line that come from the declaration itself.
std::string generated_notes(const OptionDeclaration& option) {
    std::vector<std::string> notes;
    if (!option.methods.empty()) notes.push_back("--method " + join(option.methods, ", ", " or ") + " only");
    for (const std::string& other : option.needs) notes.push_back("with --" + other);
    if (!option.choices.empty()) notes.push_back((option.kind == ValueKind::list ? "of " : "") + join(option.choices, ", ", " or "));
    if (option.required) notes.push_back("required");
    else if (!option.default_text.empty()) notes.push_back("default " + option.default_text);
    return notes.empty() ? "" : "(" + join(notes, "; ", "; ") + ")";
}

bool contains(const std::vector<std::string>& items, const std::string& item) { return std::find(items.begin(), items.end(), item) != items.end(); }

}  // namespace

CommandLine OptionTable::parse(const std::vector<std::string>& arguments) {
    CommandLine line;
    for (const std::string& argument : arguments) {
        line.help = line.help || argument == "--help" || argument == "-h";
        line.json = line.json || argument == "--json";
    }
    if (line.help) return line;
    for (std::size_t i = 0; i < arguments.size(); ++i) {
        std::string argument = arguments[i];
        if (argument.size() == 2 && argument[0] == '-' && std::isalpha(static_cast<unsigned char>(argument[1]))) {
            const auto all = declarations();
            const auto found = std::find_if(all.begin(), all.end(), [&](const OptionDeclaration* option) { return option->short_name == argument[1]; });
            if (found == all.end()) throw UsageError("unknown option " + argument);
            argument = "--" + (*found)->name;
        }
        if (argument.rfind("--", 0) != 0 || argument == "--") {
            line.positional.push_back(argument);
            continue;
        }
        std::string name = argument.substr(2), value;
        const auto equals = name.find('=');
        const bool inline_value = equals != std::string::npos;
        if (inline_value) {
            value = name.substr(equals + 1);
            name = name.substr(0, equals);
        }
        const OptionDeclaration* option = find(name);
        if (option == nullptr) throw UsageError("unknown option --" + name);
        if (option->kind == ValueKind::flag) {
            if (inline_value) throw UsageError("option --" + name + " takes no value");
        } else if (!inline_value) {
            if (i + 1 >= arguments.size()) throw UsageError("option --" + name + " needs a value (" + option->value_name + ")");
            value = arguments[++i];
        }
        if (option->assign) option->assign(value);
        m_given.insert(name);
    }
    check_relations(line);
    return line;
}

void OptionTable::check_relations(const CommandLine& line) const {
    const std::size_t count = line.positional.size();
    if (count < m_text.min_positional || count > m_text.max_positional) {
        if (m_text.max_positional == 0) throw UsageError("takes no positional arguments, got '" + line.positional.front() + "'");
        const std::string expected = m_text.min_positional == m_text.max_positional ? std::to_string(m_text.min_positional)
                                     : count < m_text.min_positional              ? "at least " + std::to_string(m_text.min_positional)
                                                                                  : "at most " + std::to_string(m_text.max_positional);
        throw UsageError("expected " + expected + " " + m_text.positional + ", got " + std::to_string(count));
    }
    for (const OptionDeclaration* option : declarations()) {
        if (option->required && !given(option->name)) throw UsageError("missing " + option_label(*option) + " (required)");
        if (!given(option->name)) continue;
        for (const std::string& other : option->needs)
            if (!given(other)) throw UsageError("--" + option->name + " needs --" + other);
        for (const std::string& other : option->excludes)
            if (given(other))
                throw UsageError("--" + option->name + " and --" + other + " exclude each other" +
                                 (option->excludes_reason.empty() ? "" : ": " + option->excludes_reason));
        if (m_method != nullptr && !option->methods.empty() && !contains(option->methods, *m_method))
            throw UsageError("--" + option->name + " applies to --method " + join(option->methods, ", ", " or ") + " only, not " + *m_method);
    }
}

std::string OptionTable::help() const {
    std::string text = "usage: nwc " + m_text.name + " " + m_text.usage + "\n\n" + m_text.description + "\n\noptions:\n";
    for (const OptionDeclaration* option : declarations()) {
        std::string label = "  " + option_label(*option);
        label = label.size() + 1 < label_width ? label + std::string(label_width - label.size(), ' ') : label + "\n" + std::string(label_width, ' ');
        const std::string notes = generated_notes(*option);
        text += label + wrap(option->help + (notes.empty() ? "" : " " + notes), label_width) + "\n";
    }
    return text + "\n" + wrap("exit codes: 0 ok, 1 bad input (" + m_text.bad_input + "), 2 usage", 0) + "\n";
}

nlohmann::json OptionTable::declarations_json() const {
    nlohmann::json options = nlohmann::json::array();
    for (const OptionDeclaration* option : declarations()) {
        nlohmann::json item = {{"name", option->name},
                               {"kind", kind_name(option->kind)},
                               {"help", option->help},
                               {"required", option->required},
                               {"default", option->default_text.empty() ? nlohmann::json(nullptr) : nlohmann::json(option->default_text)}};
        if (option->short_name) item["short"] = std::string(1, option->short_name);
        if (!option->value_name.empty()) item["value"] = option->value_name;
        if (!option->choices.empty()) item["choices"] = option->choices;
        if (!option->methods.empty()) item["methods"] = option->methods;
        if (!option->needs.empty()) item["needs"] = option->needs;
        if (!option->excludes.empty()) item["excludes"] = option->excludes;
        if (option->minimum || option->maximum) item["bounds"] = option->bounds_text();
        options.push_back(std::move(item));
    }
    return {{"command", m_text.name},
            {"usage", "nwc " + m_text.name + " " + m_text.usage},
            {"positional", {{"name", m_text.positional}, {"min", m_text.min_positional}, {"max", m_text.max_positional}}},
            {"options", std::move(options)},
            {"exit_codes", {{"0", "ok"}, {"1", "bad input (" + m_text.bad_input + ")"}, {"2", "usage"}}}};
}

}  // namespace nwc::cli
