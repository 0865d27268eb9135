// nwc inspect: the tensors of a .nwc file with their methods and rates.
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

constexpr const char* inspect_help = R"(usage: nwc inspect IN.nwc [options]

Lists every tensor of a .nwc file: name, shape, dtype, method, its setting (bits, step or alpha),
bits per weight as written (8 x (metadata + payload bytes) / weights), segments, and the relative
MSE and proxy loss measured at compression (- when not stored). The last line gives the whole
file's rate: 8 x file bytes / weights.

options:
  --verify   also check every region's CRC-32C and the zero padding
  --json     print the listing as JSON on stdout
  --help     this text

exit codes: 0 ok, 1 bad input (unreadable or corrupt file), 2 usage
)";

}  // namespace

int run_inspect(const std::vector<std::string>& raw_arguments) {
    const Arguments arguments(expand_short_options(raw_arguments), {}, {"json", "verify", "help"});
    if (arguments.flag("help")) {
        std::fputs(inspect_help, stdout);
        return exit_ok;
    }
    if (arguments.positional().size() != 1) throw UsageError(std::string("expected one input .nwc file, got ") + std::to_string(arguments.positional().size()));
    const std::string input = arguments.positional()[0];
    const ContainerReader reader = ContainerReader::open(input);
    if (arguments.flag("verify")) reader.verify();

    std::vector<TensorRow> rows;
    std::vector<Shape> shapes;
    std::int64_t weights = 0;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (entry.name == detail::rope_corrections_name) continue;
        const auto metadata = reader.metadata(index);
        const detail::StoredDiagnostics stored = entry.method == "raw" ? detail::StoredDiagnostics{0.0, NAN, NAN} : detail::stored_diagnostics(metadata);
        const double relative_mse = stored.relative_mse, proxy_loss = stored.proxy_loss;
        const std::int64_t count = entry.shape.numel();
        weights += count;
        rows.push_back({entry.name, shape_text(entry.shape), std::string(dtype_name(entry.original_dtype)), entry.method,
                        DefaultCodec::stored_setting(entry, metadata),
                        count > 0 ? 8.0 * double(entry.metadata_size + entry.payload_size) / double(count) : 0.0, entry.segment_count(), relative_mse,
                        proxy_loss});
        shapes.push_back(entry.shape);
    }
    const nlohmann::json metadata = nlohmann::json::parse(reader.file_metadata(), nullptr, false);
    const std::string source = metadata.is_object() && metadata.contains("source") ? metadata["source"].value("source_format", "?") : "?";
    const double file_bpw = weights > 0 ? 8.0 * double(reader.total_size()) / double(weights) : 0.0;
    std::uint64_t codec_bytes = 0;
    for (std::size_t k = 0; k < reader.codec_count(); ++k) codec_bytes += reader.codec_entry(k).size;

    if (arguments.flag("json")) {
        nlohmann::json tensors = nlohmann::json::array();
        for (std::size_t k = 0; k < rows.size(); ++k) tensors.push_back(row_json(rows[k], shapes[k]));
        const nlohmann::json root = {{"file", input},
                                     {"file_bytes", reader.total_size()},
                                     {"weights", weights},
                                     {"bits_per_weight", file_bpw},
                                     {"source_format", source},
                                     {"codecs", reader.codec_count()},
                                     {"codec_bytes", codec_bytes},
                                     {"verified", arguments.flag("verify")},
                                     {"metadata", metadata.is_discarded() ? nlohmann::json(nullptr) : metadata},
                                     {"tensors", std::move(tensors)}};
        std::printf("%s\n", root.dump(2).c_str());
        return exit_ok;
    }
    print_table(rows);
    std::printf("\n%s: %zu tensors from %s, %zu codec(s) of %llu bytes%s\n", input.c_str(), rows.size(), source.c_str(), reader.codec_count(),
                static_cast<unsigned long long>(codec_bytes), arguments.flag("verify") ? ", all checksums verified" : "");
    std::printf("%llu bytes for %lld weights: %.4f bits per weight (whole file)\n", static_cast<unsigned long long>(reader.total_size()),
                static_cast<long long>(weights), file_bpw);
    return exit_ok;
}

}  // namespace nwc::cli
