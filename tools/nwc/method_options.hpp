// The options that select and tune a per-tensor method, generated from the codec's method list
// (nwc::DefaultCodec::methods): --method takes its names, each distinct rate knob (MethodKnob:
// "bits", "step", "alpha") becomes one option that applies to the methods that have it, and
// --codec applies to the methods that embed a trained codec. A method added to the list gets its
// name and its knob option here without an edit; a method without a rate knob (lossless) gets no
// knob option, and the options that choose a rate (--target-bpw) do not apply to it.
#pragma once

#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/pipeline/pipeline_codec.hpp"
#include "options.hpp"

namespace nwc::cli {

/// What the command line needs to know of one method of the list.
struct MethodInfo {
    std::string name;
    MethodKnob knob;
    bool needs_codec = false;  ///< its tensors refer to a trained codec embedded in the file (nwc)
    bool has_rate_knob = true;  ///< false for a lossless method: no knob option, no rate target
    bool is_lossless = false;   ///< reproduces the weights bit for bit (no calibration applies)
    double (*knob_value)(const MethodOptions&) = nullptr;
    void (*set_knob)(MethodOptions&, double) = nullptr;
};

namespace internal {
template <class List>
struct method_infos;
template <class... Methods>
struct method_infos<MethodList<Methods...>> {
    static std::vector<MethodInfo> get() {
        return {MethodInfo{std::string(Methods::name), Methods::knob, uses_codec_blob<Methods>, has_rate_knob<Methods>, is_lossless<Methods>,
                           +[](const MethodOptions& options) { return double(Methods::knob_value(options)); },
                           +[](MethodOptions& options, double value) { Methods::set_knob(options, value); }}...};
    }
};

/// What a knob's value means, for the help line. A knob this map does not know still gets its
/// option, with a generated line.
inline std::string knob_meaning(std::string_view option) {
    static const std::map<std::string_view, std::string> meanings = {
        {"bits", "bits per code, 2..8; a scale per group of weights comes on top (grid codes and signs about 0.16 bits per weight; Q4_0's fp16 scales 0.5)"},
        {"step", "quantizer step on normalized weights; smaller: more bits"},
        {"alpha", "weights are scaled by A before the encoder; larger: more bits"},
    };
    const auto found = meanings.find(option);
    return found != meanings.end() ? found->second : "the rate knob";
}
}  // namespace internal

/// The methods of the codec the command line runs, in list order.
inline const std::vector<MethodInfo>& cli_methods() {
    static const std::vector<MethodInfo> methods = internal::method_infos<DefaultCodec::methods>::get();
    return methods;
}

/// Names of the methods for which `predicate(info)` holds.
template <class Predicate>
std::vector<std::string> method_names_where(Predicate&& predicate) {
    std::vector<std::string> names;
    for (const MethodInfo& method : cli_methods())
        if (predicate(method)) names.push_back(method.name);
    return names;
}

/// The knob options ("alpha", "step", "bits"), each once, in list order.
inline std::vector<std::string> knob_options() {
    std::vector<std::string> options;
    for (const MethodInfo& method : cli_methods())
        if (method.has_rate_knob && std::find(options.begin(), options.end(), method.knob.option) == options.end())
            options.emplace_back(method.knob.option);
    return options;
}

/// The methods with a rate knob (what --target-bpw applies to).
inline std::vector<std::string> rate_methods() {
    return method_names_where([](const MethodInfo& method) { return method.has_rate_knob; });
}

/// The methods that may change the weights (what calibration applies to).
inline std::vector<std::string> lossy_methods() {
    return method_names_where([](const MethodInfo& method) { return !method.is_lossless; });
}

/// --method, bound to options.method (its value now is the default shown); with `rate_only`, only
/// the methods with a rate knob are choices (for commands that always set a rate target).
inline void declare_method_choice(OptionTable& table, MethodOptions& options, const std::string& help, bool rate_only = false) {
    table.choice("method", "M", help, options.method, rate_only ? rate_methods() : method_names_where([](const MethodInfo&) { return true; }));
    table.selects_method(options.method);
}

/// One option per rate knob, set through the methods' own set_knob and applying to the methods
/// that have that knob; the defaults shown are those of `options`. Then --group-size and
/// --fp16-scales, which belong to the layout of the integer-code methods (knob "bits": a scale per group).
inline void declare_knob_options(OptionTable& table, MethodOptions& options) {
    for (const std::string& knob : knob_options()) {
        const std::vector<std::string> methods = method_names_where([&](const MethodInfo& method) { return method.knob.option == knob; });
        const MethodInfo& first = *std::find_if(cli_methods().begin(), cli_methods().end(), [&](const MethodInfo& m) { return m.name == methods.front(); });
        const bool integer = first.knob.integer;
        OptionDeclaration& option = table.custom(knob, integer ? ValueKind::integer : ValueKind::number,
                                                 integer ? "N" : std::string(1, char(std::toupper(static_cast<unsigned char>(knob.front())))),
                                                 internal::knob_meaning(knob));
        // One default when the methods sharing the knob agree; else each method's ("0.5 (ecsq), 0.25 (tcq)").
        const auto text_of = [integer](double value) { return integer ? std::to_string(static_cast<long long>(value)) : number_text(value); };
        option.default_text = text_of(first.knob_value(options));
        bool agree = true;
        std::string each;
        for (const MethodInfo& method : cli_methods()) {
            if (std::find(methods.begin(), methods.end(), method.name) == methods.end()) continue;
            agree = agree && method.knob_value(options) == first.knob_value(options);
            each += (each.empty() ? "" : ", ") + text_of(method.knob_value(options)) + " (" + method.name + ")";
        }
        if (!agree) option.default_text = each;
        option.assign = [&option, &options, methods, integer](const std::string& text) {
            const double knob_value = integer ? double(cli::internal::parse_integer(option, text, -1000000, 1000000)) : cli::internal::parse_number(option, text);
            for (const MethodInfo& method : cli_methods())
                if (std::find(methods.begin(), methods.end(), method.name) != methods.end()) method.set_knob(options, knob_value);
        };
        option.for_methods(methods);
    }
    const std::vector<std::string> grouped = method_names_where([](const MethodInfo& method) { return method.knob.option == "bits"; });
    table.value("group-size", "G", "weights of a row sharing one scale (32 with --fp16-scales is llama.cpp's Q4_0 layout)", options.group_size)
        .at_least(1)
        .for_methods(grouped);
    table.flag("fp16-scales", "fp16 group scales chosen as llama.cpp's Q4_0 does (16 bits each) instead of least-error scales coded in ~4 bits",
               options.fp16_group_scales)
        .for_methods(grouped);
}

/// The methods whose tensors embed a trained codec (for --codec).
inline std::vector<std::string> codec_methods() {
    return method_names_where([](const MethodInfo& method) { return method.needs_codec; });
}

}  // namespace nwc::cli
