// nwc inspect: the tensors of a .nwc file with their methods and rates.
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

struct InspectSettings {
    bool verify = false;
    bool breakdown = false;
};

struct InspectCommand {
    using Settings = InspectSettings;

    static CommandText text() {
        return {.name = "inspect",
                .usage = "IN.nwc [options]",
                .description = R"(Lists every tensor of a .nwc file: name, shape, dtype, method, its setting (bits, step or alpha),
bits per weight as written (8 x (metadata + payload bytes) / weights), segments, the relative
MSE measured at compression and the sensitivity allocation used (- when not stored; the proxy
loss is in the compress report only). The last line gives the whole
file's rate: 8 x file bytes / weights. With --breakdown, every byte of the file by what it is
for (payload: the entropy-coded or packed codes; the rest is side information: scales, levels,
entropy tables, stream framing, method metadata, directory, header, padding, embedded codecs,
passthrough tensors); the categories sum exactly to the file size.)",
                .positional = "input .nwc file",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable or corrupt file"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        table.flag("verify", "also check every region's CRC-32C and the zero padding", settings.verify);
        table.flag("breakdown", "account for every byte by category (text table; JSON \"breakdown\" and per-tensor \"bytes\")", settings.breakdown);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

/// One row per tensor (the llama2.c RoPE corrections and a model directory's files the container
/// adds are not model tensors).
std::vector<std::pair<TensorRow, Shape>> tensor_rows(const ContainerReader& reader) {
    std::vector<std::pair<TensorRow, Shape>> rows;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (nwc::detail::is_rope_corrections(entry.name) || nwc::detail::is_source_file(entry.name)) continue;
        const auto metadata = reader.metadata(index);
        const nwc::detail::StoredDiagnostics stored =
            entry.method == "raw" ? nwc::detail::StoredDiagnostics{0.0, NAN} : nwc::detail::stored_diagnostics(metadata);
        const double relative_mse = stored.relative_mse, proxy_loss = NAN;  // not stored (layout 3): the compress report has it
        const std::int64_t count = entry.shape.numel();
        rows.push_back({{entry.name, shape_text(entry.shape), std::string(dtype_name(entry.original_dtype)), entry.method,
                         DefaultCodec::stored_setting(entry, metadata),
                         count > 0 ? 8.0 * double(entry.metadata_size + entry.payload_size) / double(count) : 0.0, entry.segment_count(), relative_mse,
                         proxy_loss, stored.sensitivity},
                        entry.shape});
    }
    return rows;
}

Outcome InspectCommand::run(const Settings& settings, const std::vector<std::string>& positional, const Invocation&) {
    const std::string& input = positional[0];
    const ContainerReader reader = ContainerReader::open(input);
    if (settings.verify) reader.verify();
    const std::vector<std::pair<TensorRow, Shape>> rows = tensor_rows(reader);
    std::int64_t weights = 0;
    for (const auto& [row, shape] : rows) weights += shape.numel();
    const nlohmann::json metadata = nlohmann::json::parse(reader.file_metadata(), nullptr, false);
    const std::string source = metadata.is_object() && metadata.contains("source") ? metadata["source"].value("source_format", "?") : "?";
    const double file_bpw = weights > 0 ? 8.0 * double(reader.total_size()) / double(weights) : 0.0;
    std::uint64_t codec_bytes = 0;
    for (std::size_t k = 0; k < reader.codec_count(); ++k) codec_bytes += reader.codec_entry(k).size;

    Outcome outcome;
    nlohmann::json tensors = nlohmann::json::array();
    std::vector<TensorRow> table;
    for (const auto& [row, shape] : rows) {
        tensors.push_back(row_json(row, shape));
        table.push_back(row);
    }
    outcome.json = {{"file", input},
                    {"file_bytes", reader.total_size()},
                    {"weights", weights},
                    {"bits_per_weight", file_bpw},
                    {"source_format", source},
                    {"codecs", reader.codec_count()},
                    {"codec_bytes", codec_bytes},
                    {"verified", settings.verify},
                    {"metadata", metadata.is_discarded() ? nlohmann::json(nullptr) : metadata},
                    {"tensors", std::move(tensors)}};
    if (settings.breakdown) {
        const DefaultCodec::FileAccount account = DefaultCodec::account(reader);
        require(account.total.total() == reader.total_size(), errc::corrupt, "inspect: the breakdown sums to ", account.total.total(),
                " bytes, the file has ", reader.total_size());
        nlohmann::json breakdown = nlohmann::json::object();
        for (const auto& [category, bytes] : account.total.bytes) breakdown[category] = bytes;
        outcome.json["breakdown"] = std::move(breakdown);
        const double side_bpw = weights > 0 ? 8.0 * double(account.total.side_information()) / double(weights) : 0.0;
        outcome.json["side_information_bytes"] = account.total.side_information();
        outcome.json["side_information_bits_per_weight"] = side_bpw;
        // Per tensor: its own categories (the rope corrections row is not listed, as above).
        std::size_t row = 0;
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            if (nwc::detail::is_rope_corrections(reader.entry(index).name) || nwc::detail::is_source_file(reader.entry(index).name)) continue;
            nlohmann::json bytes = nlohmann::json::object();
            for (const auto& [category, count] : account.tensors[index].bytes) bytes[category] = count;
            outcome.json["tensors"][row++]["bytes"] = std::move(bytes);
        }
        std::string text = table_text(table);
        append_format(text, "\n%-12s %12s %10s %8s\n", "category", "bytes", "bits/w", "share");
        for (const auto& [category, bytes] : account.total.bytes)
            append_format(text, "%-12s %12llu %10.4f %7.2f%%\n", category.c_str(), static_cast<unsigned long long>(bytes),
                          weights > 0 ? 8.0 * double(bytes) / double(weights) : 0.0, 100.0 * double(bytes) / double(reader.total_size()));
        append_format(text, "side information (all but payload): %llu bytes, %.4f bits per weight\n",
                      static_cast<unsigned long long>(account.total.side_information()), side_bpw);
        outcome.text = std::move(text);
    } else {
        outcome.text = table_text(table);
    }
    append_format(outcome.text, "\n%s: %zu tensors from %s, %zu codec(s) of %llu bytes%s\n", input.c_str(), rows.size(), source.c_str(), reader.codec_count(),
                  static_cast<unsigned long long>(codec_bytes), settings.verify ? ", all checksums verified" : "");
    append_format(outcome.text, "%llu bytes for %lld weights: %.4f bits per weight (whole file)\n", static_cast<unsigned long long>(reader.total_size()),
                  static_cast<long long>(weights), file_bpw);
    return outcome;
}

}  // namespace

int run_inspect(const std::vector<std::string>& arguments) { return command_main<InspectCommand>(arguments); }

}  // namespace nwc::cli
