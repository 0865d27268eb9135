// The SVG line plot of `nwc report`: x linear, y logarithmic (perplexities of compressed models span
// more than a decade at low rates), one polyline with markers per series, a dashed reference line
// (the uncompressed model), a legend. Plain SVG 1.1, no scripts, no external fonts.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace nwc::cli {

struct PlotSeries {
    std::string name;
    std::vector<std::pair<double, double>> points;  ///< (x, y), sorted by x
};

namespace detail {

inline std::string svg_number(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.2f", value);
    return buffer;
}

inline std::string tick_label(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%g", value);
    return buffer;
}

inline std::string svg_escape(const std::string& text) {
    std::string escaped;
    for (char c : text) {
        if (c == '&') escaped += "&amp;";
        else if (c == '<') escaped += "&lt;";
        else if (c == '>') escaped += "&gt;";
        else escaped += c;
    }
    return escaped;
}

}  // namespace detail

/// The plot as an SVG document. `reference_y` (> 0) is drawn as a dashed horizontal line.
inline std::string plot_svg(const std::vector<PlotSeries>& series, double reference_y, const std::string& x_label, const std::string& y_label) {
    using detail::svg_number;
    constexpr double width = 760, height = 480, left = 70, right = 230, top = 20, bottom = 50;
    double x_min = INFINITY, x_max = -INFINITY, y_min = reference_y > 0 ? reference_y : INFINITY, y_max = y_min;
    for (const auto& line : series)
        for (const auto& [x, y] : line.points) {
            x_min = std::min(x_min, x), x_max = std::max(x_max, x);
            if (y > 0) y_min = std::min(y_min, y), y_max = std::max(y_max, y);
        }
    if (!std::isfinite(x_min)) x_min = 0, x_max = 1;
    if (!std::isfinite(y_min)) y_min = 1, y_max = 10;
    x_min = std::floor(x_min * 2) / 2, x_max = std::ceil(x_max * 2) / 2;
    if (x_max <= x_min) x_max = x_min + 1;
    const double log_low = std::floor(std::log10(y_min) * 10) / 10, log_high = std::max(log_low + 0.1, std::ceil(std::log10(y_max) * 10) / 10);
    const double plot_w = width - left - right, plot_h = height - top - bottom;
    const auto px = [&](double x) { return left + (x - x_min) / (x_max - x_min) * plot_w; };
    const auto py = [&](double y) { return top + (log_high - std::log10(y)) / (log_high - log_low) * plot_h; };

    std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + svg_number(width) + "\" height=\"" + svg_number(height) +
                      "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    // Grid and ticks: x every 0.5, y at 1-2-5 steps inside the range.
    for (double x = x_min; x <= x_max + 1e-9; x += 0.5) {
        svg += "<line x1=\"" + svg_number(px(x)) + "\" y1=\"" + svg_number(top) + "\" x2=\"" + svg_number(px(x)) + "\" y2=\"" + svg_number(top + plot_h) +
               "\" stroke=\"#e0e0e0\"/>\n";
        svg += "<text x=\"" + svg_number(px(x)) + "\" y=\"" + svg_number(top + plot_h + 16) + "\" text-anchor=\"middle\">" + svg_number(x).substr(0, svg_number(x).size() - 1) +
               "</text>\n";
    }
    for (double decade = std::pow(10.0, std::floor(log_low)); decade <= std::pow(10.0, log_high); decade *= 10)
        for (double mantissa : {1.0, 2.0, 5.0}) {
            const double y = decade * mantissa, l = std::log10(y);
            if (l < log_low - 1e-9 || l > log_high + 1e-9) continue;
            svg += "<line x1=\"" + svg_number(left) + "\" y1=\"" + svg_number(py(y)) + "\" x2=\"" + svg_number(left + plot_w) + "\" y2=\"" +
                   svg_number(py(y)) + "\" stroke=\"#e0e0e0\"/>\n";
            svg += "<text x=\"" + svg_number(left - 6) + "\" y=\"" + svg_number(py(y) + 4) + "\" text-anchor=\"end\">" + detail::tick_label(y) + "</text>\n";
        }
    svg += "<rect x=\"" + svg_number(left) + "\" y=\"" + svg_number(top) + "\" width=\"" + svg_number(plot_w) + "\" height=\"" + svg_number(plot_h) +
           "\" fill=\"none\" stroke=\"black\"/>\n";
    svg += "<text x=\"" + svg_number(left + plot_w / 2) + "\" y=\"" + svg_number(height - 10) + "\" text-anchor=\"middle\">" + detail::svg_escape(x_label) +
           "</text>\n";
    svg += "<text transform=\"translate(16," + svg_number(top + plot_h / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + detail::svg_escape(y_label) +
           "</text>\n";
    if (reference_y > 0)
        svg += "<line x1=\"" + svg_number(left) + "\" y1=\"" + svg_number(py(reference_y)) + "\" x2=\"" + svg_number(left + plot_w) + "\" y2=\"" +
               svg_number(py(reference_y)) + "\" stroke=\"black\" stroke-dasharray=\"6,4\"/>\n";
    static const char* colors[] = {"#d62728", "#ff7f0e", "#e377c2", "#2ca02c", "#17becf", "#1f77b4", "#7f7f7f", "#9467bd", "#8c564b", "#bcbd22"};
    for (std::size_t s = 0; s < series.size(); ++s) {
        const std::string color = colors[s % std::size(colors)];
        std::string path;
        for (const auto& [x, y] : series[s].points) path += svg_number(px(x)) + "," + svg_number(py(y)) + " ";
        svg += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"2\" points=\"" + path + "\"/>\n";
        for (const auto& [x, y] : series[s].points)
            svg += "<circle cx=\"" + svg_number(px(x)) + "\" cy=\"" + svg_number(py(y)) + "\" r=\"3\" fill=\"" + color + "\"/>\n";
        const double legend_y = top + 14 + double(s) * 20;
        svg += "<line x1=\"" + svg_number(width - right + 14) + "\" y1=\"" + svg_number(legend_y - 4) + "\" x2=\"" + svg_number(width - right + 38) +
               "\" y2=\"" + svg_number(legend_y - 4) + "\" stroke=\"" + color + "\" stroke-width=\"2\"/>\n";
        svg += "<text x=\"" + svg_number(width - right + 44) + "\" y=\"" + svg_number(legend_y) + "\">" + detail::svg_escape(series[s].name) + "</text>\n";
    }
    if (reference_y > 0) {
        const double legend_y = top + 14 + double(series.size()) * 20;
        svg += "<line x1=\"" + svg_number(width - right + 14) + "\" y1=\"" + svg_number(legend_y - 4) + "\" x2=\"" + svg_number(width - right + 38) +
               "\" y2=\"" + svg_number(legend_y - 4) + "\" stroke=\"black\" stroke-dasharray=\"6,4\"/>\n";
        svg += "<text x=\"" + svg_number(width - right + 44) + "\" y=\"" + svg_number(legend_y) + "\">uncompressed (fp32)</text>\n";
    }
    return svg + "</svg>\n";
}

}  // namespace nwc::cli
