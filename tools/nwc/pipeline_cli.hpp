// Shared by `nwc compress`, `nwc decompress`, `nwc inspect`, `nwc report` and `nwc demo`: the
// shipped codecs, the progress bar, the per-tensor table and the JSON form of the reports.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "options.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/pipeline/pipeline.hpp"

#ifndef NWC_CODEC_DIR
#define NWC_CODEC_DIR "codecs"
#endif

namespace nwc::cli {

/// "a,b,,c" -> {"a", "b", "c"}: the comma-separated lists of --codec.
inline std::vector<std::string> split_list(const std::string& text) { return internal::split_list(text); }

/// Every shipped codec (NWC_CODEC_DIR/*.nwcc), sorted, comma-separated; empty if there are none.
inline std::string default_codec_list() {
    std::vector<std::string> paths;
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator(NWC_CODEC_DIR, ignored))
        if (entry.path().extension() == ".nwcc") paths.push_back(entry.path().string());
    std::sort(paths.begin(), paths.end());
    std::string joined;
    for (const auto& path : paths) joined += (joined.empty() ? "" : ",") + path;
    return joined;
}

/// A number for JSON: null when unknown (NaN).
/// --sensitivity-windows and --sensitivity-pairs, bound to `options` (compress, report, demo);
/// `needing` names the option they require, if any (compress: --calib).
inline void declare_sensitivity_options(OptionTable& table, llm::SensitivityOptions& options, const std::string& needing = "") {
    OptionDeclaration& windows = table.value("sensitivity-windows", "N", "allocation: sensitivities from the first N calibration windows", options.windows).at_least(1);
    if (!needing.empty()) windows.needing(needing);
    OptionDeclaration& pairs = table.value("sensitivity-pairs", "N", "allocation: antithetic noise pairs per tensor and window", options.pairs).at_least(1);
    if (!needing.empty()) pairs.needing(needing);
}

inline nlohmann::json number_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); }

inline nlohmann::json shape_json(const Shape& shape) {
    nlohmann::json dims = nlohmann::json::array();
    for (std::int64_t dim : shape.dims()) dims.push_back(dim);
    return dims;
}

inline std::string shape_text(const Shape& shape) {
    std::string text;
    for (int axis = 0; axis < shape.rank(); ++axis) {
        if (axis) text += "x";
        text += std::to_string(shape[axis]);
    }
    return text.empty() ? "scalar" : text;
}

/// "0.01234" or "-" for an unknown value.
inline std::string optional_number(double value, const char* format = "%.5f") {
    if (!std::isfinite(value)) return "-";
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, format, value);
    return buffer;
}

/// A progress bar on stderr, drawn only when stderr is a terminal, at most 10 times a second.
class ProgressBar {
public:
    ProgressBar() : m_enabled(::isatty(STDERR_FILENO) == 1), m_start(std::chrono::steady_clock::now()) {}
    ~ProgressBar() { finish(); }

    ProgressCallback callback() {
        if (!m_enabled) return {};
        return [this](const PipelineProgress& progress) { draw(progress); };
    }
    void finish() {
        std::lock_guard lock(m_mutex);
        if (m_drawn) std::fprintf(stderr, "\r\033[K");
        m_drawn = false;
    }

private:
    void draw(const PipelineProgress& progress) {
        std::lock_guard lock(m_mutex);
        const auto now = std::chrono::steady_clock::now();
        const bool last = progress.tensors_done == progress.tensors_total;
        if (!last && now - m_last < std::chrono::milliseconds(100)) return;
        if (progress.phase != m_phase) {
            m_phase = std::string(progress.phase);
            m_start = now;
        }
        m_last = now;
        const double seconds = std::chrono::duration<double>(now - m_start).count();
        const double fraction = progress.weights_total > 0 ? double(progress.weights_done) / double(progress.weights_total) : 1.0;
        const double rate = seconds > 0 ? double(progress.weights_done) / seconds : 0.0;
        const double left = rate > 0 ? double(progress.weights_total - progress.weights_done) / rate : 0.0;
        constexpr int width = 30;
        std::string bar(std::size_t(width), ' ');
        for (int i = 0; i < int(fraction * width + 0.5) && i < width; ++i) bar[std::size_t(i)] = '#';
        std::fprintf(stderr, "\r\033[K%s [%s] %zu/%zu tensors  %.2f M weights/s  %d:%02d left", m_phase.c_str(), bar.c_str(), progress.tensors_done,
                     progress.tensors_total, rate / 1e6, int(left) / 60, int(left) % 60);
        std::fflush(stderr);
        m_drawn = true;
    }

    bool m_enabled;
    bool m_drawn = false;
    std::mutex m_mutex;
    std::string m_phase;
    std::chrono::steady_clock::time_point m_start, m_last{};
};

/// One row of the per-tensor table (compress and inspect print the same columns).
struct TensorRow {
    std::string name, shape, dtype, method, setting;
    double bits_per_weight = 0.0;
    std::size_t segments = 1;
    double relative_mse = NAN, proxy_loss = NAN;
    double sensitivity = NAN;  ///< the allocation's loss per unit of noise variance (NaN: none)
};

inline TensorRow tensor_row(const TensorReport& tensor) {
    return {tensor.name, shape_text(tensor.shape), std::string(dtype_name(tensor.original_dtype)), tensor.method, tensor.setting,
            tensor.bits_per_weight(), tensor.segments, tensor.relative_mse, tensor.proxy_loss, NAN};
}

/// The per-tensor table as text.
inline std::string table_text(const std::vector<TensorRow>& rows) {
    std::size_t name_width = 4;
    for (const auto& row : rows) name_width = std::max(name_width, row.name.size());
    name_width = std::min<std::size_t>(name_width, 60);
    std::string text;
    bool any_sensitivity = false;
    for (const auto& row : rows) any_sensitivity |= !std::isnan(row.sensitivity);
    append_format(text, "%-*s %-11s %-5s %-6s %-14s %8s %5s %11s %11s%s\n", int(name_width), "name", "shape", "dtype", "method", "setting", "bits/w", "segs",
                  "rel.MSE", "proxy", any_sensitivity ? "  sensitivity" : "");
    for (const auto& row : rows)
        append_format(text, "%-*s %-11s %-5s %-6s %-14s %8.4f %5zu %11s %11s%s\n", int(name_width), row.name.c_str(), row.shape.c_str(), row.dtype.c_str(),
                      row.method.c_str(), row.setting.c_str(), row.bits_per_weight, row.segments, optional_number(row.relative_mse, "%.4e").c_str(),
                      optional_number(row.proxy_loss, "%.4e").c_str(),
                      any_sensitivity ? ("  " + optional_number(row.sensitivity, "%11.4e")).c_str() : "");
    return text;
}

inline nlohmann::json row_json(const TensorRow& row, const Shape& shape) {
    return {{"name", row.name},
            {"shape", shape_json(shape)},
            {"dtype", row.dtype},
            {"method", row.method},
            {"setting", row.setting},
            {"bits_per_weight", row.bits_per_weight},
            {"segments", row.segments},
            {"relative_mse", number_or_null(row.relative_mse)},
            {"proxy_loss", number_or_null(row.proxy_loss)},
            {"sensitivity", number_or_null(row.sensitivity)}};
}

}  // namespace nwc::cli
