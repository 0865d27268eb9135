// nwc::write_hf_directory: a model written as a Hugging Face checkpoint directory, the layout
// `save_pretrained` writes and `from_pretrained` loads: config.json, the weights in safetensors
// shards of at most a given size, and model.safetensors.index.json when there is more than one.
//
// Read me first:
// - Shards: tensors in model order, a new shard when the next tensor would pass `shard_bytes`
//   (a tensor larger than that gets a shard of its own), as transformers' shard_checkpoint does.
//   One shard is `model.safetensors` with no index; n shards are `model-0000k-of-0000n.safetensors`
//   and the index maps every tensor name to its shard, with "total_size" the tensor bytes.
// - config.json: the source's config.json for a model read from a Hugging Face directory, the
//   config llama2.c's header implies for a llama2.c model (tensors under HF names and row order,
//   as write_model_file's .safetensors does); a plain safetensors source has none to write.
// - The source directory's other files (ModelFile::files: tokenizer files, generation_config.json)
//   are written back byte for byte beside config.json.
// - Nothing is lost: everything is written into a temporary sibling directory, which replaces the
//   target by one rename only when complete. The target may be absent or an empty directory; an
//   existing non-empty one is refused before anything is written (errc::invalid_argument), and on
//   any failure the temporary directory is removed and the target is untouched.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/io/safetensors_writer.hpp"

namespace nwc {

/// transformers' default max_shard_size ("5GB").
inline constexpr std::uint64_t default_hf_shard_bytes = 5'000'000'000;

/// What write_hf_directory wrote.
struct HfDirectoryReport {
    std::vector<std::string> files;  ///< in the directory, in the order written
    std::size_t shards = 0;
    std::uint64_t tensor_bytes = 0;  ///< the index's total_size
};

namespace detail {
/// "model-00002-of-00003.safetensors", or "model.safetensors" when there is one shard.
inline std::string hf_shard_name(std::size_t index, std::size_t count) {
    if (count == 1) return "model.safetensors";
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
    return name;
}

/// The config.json of `model`'s directory, or null when its source has none (a plain safetensors file).
inline nlohmann::json hf_config_of(const ModelFile& model, const std::string& context) {
    if (is_hf_format(model.format)) return hf_config_in(model.source, context);
    if (model.format == ModelFormat::llama2c) {
        return llm::hf_config_json(llama2c_config_of(model.source, context));
    }
    return nullptr;
}

/// Tensor k's shard, for tensors of sizes[k] bytes in model order (see the header comment): a new
/// shard when the next tensor would pass `shard_bytes`; a tensor larger than that gets its own.
inline std::vector<std::size_t> hf_shards_of(std::span<const std::uint64_t> sizes, std::uint64_t shard_bytes) {
    std::vector<std::size_t> shard(sizes.size());
    std::size_t current = 0;
    std::uint64_t in_shard = 0;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
        if (in_shard > 0 && sizes[k] > shard_bytes - std::min(shard_bytes, in_shard)) {
            ++current;
            in_shard = 0;
        }
        shard[k] = current;
        in_shard += sizes[k];
    }
    return shard;
}

/// A directory written whole or not at all (see the header comment): the target is checked first,
/// everything goes into a temporary sibling, and commit() moves that into place in one rename.
/// Without commit() (an error on the way) the sibling is removed and the target is untouched.
class AtomicDirectory {
public:
    AtomicDirectory(const std::filesystem::path& directory, std::string context) : m_context(std::move(context)) {
        namespace fs = std::filesystem;
        std::error_code problem;
        m_target = fs::absolute(directory.has_filename() ? directory : directory.parent_path(), problem);
        require(!problem, errc::io, m_context, ": ", problem.message());
        if (fs::exists(m_target)) {
            require(fs::is_directory(m_target), errc::invalid_argument, m_context, ": exists and is not a directory");
            require(fs::is_empty(m_target), errc::invalid_argument, m_context, ": the directory is not empty (refusing to write over another model)");
        }
        require(fs::is_directory(m_target.parent_path()), errc::io, m_context, ": the parent directory '", m_target.parent_path().string(),
                "' does not exist");
        const fs::path temporary = m_target.parent_path() / ("." + m_target.filename().string() + ".nwc-partial");
        fs::remove_all(temporary, problem);  // a leftover of a killed run
        require(fs::create_directory(temporary, problem) && !problem, errc::io, m_context, ": cannot create '", temporary.string(), "': ",
                problem.message());
        m_temporary = temporary;
    }
    AtomicDirectory(const AtomicDirectory&) = delete;
    AtomicDirectory& operator=(const AtomicDirectory&) = delete;
    ~AtomicDirectory() {
        std::error_code ignored;
        if (!m_temporary.empty()) std::filesystem::remove_all(m_temporary, ignored);
    }

    /// Where the files go until commit().
    const std::filesystem::path& path() const noexcept { return m_temporary; }
    const std::string& context() const noexcept { return m_context; }

    void commit() {
        std::error_code problem;
        if (std::filesystem::exists(m_target)) std::filesystem::remove(m_target, problem);  // empty (checked above): rename needs it gone
        std::filesystem::rename(m_temporary, m_target, problem);
        require(!problem, errc::io, m_context, ": cannot move the finished directory into place: ", problem.message());
        m_temporary.clear();
    }

private:
    std::string m_context;
    std::filesystem::path m_target, m_temporary;
};

/// Writes config.json (unless null), the source's other files and, for several shards, the index
/// into `directory`, whose shards already have their final names; shard_tensors[k] names shard
/// k's tensors. Fills report.files (config, files, shards, index: the order write_hf_directory
/// reports) and report.shards.
inline void finish_hf_directory(const AtomicDirectory& directory, const nlohmann::json& config, std::span<const SourceFile> files,
                                const std::vector<std::vector<std::string>>& shard_tensors, HfDirectoryReport& report) {
    const auto write_text = [&](const std::string& file, const nlohmann::json& value) {
        const std::string text = value.dump(2) + "\n";
        write_file_atomic(directory.path() / file, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
        report.files.push_back(file);
    };
    if (!config.is_null()) write_text("config.json", config);
    for (const SourceFile& file : files) {
        require(is_plain_file_name(file.name) && file.name != "config.json", errc::invalid_argument, directory.context(), ": file name '", file.name,
                "' is not a plain file name");
        write_file_atomic(directory.path() / file.name, file.bytes);
        report.files.push_back(file.name);
    }
    nlohmann::json weight_map = nlohmann::json::object();
    for (std::size_t k = 0; k < shard_tensors.size(); ++k) {
        const std::string file = hf_shard_name(k, shard_tensors.size());
        for (const std::string& name : shard_tensors[k]) weight_map[name] = file;
        report.files.push_back(file);
    }
    report.shards = shard_tensors.size();
    if (shard_tensors.size() > 1)
        write_text("model.safetensors.index.json",
                   nlohmann::json{{"metadata", {{"total_size", report.tensor_bytes}}}, {"weight_map", std::move(weight_map)}});
}
}  // namespace detail

/// Writes `model` as a Hugging Face directory at `directory` (see the header comment).
inline HfDirectoryReport write_hf_directory(const ModelFile& model, const std::filesystem::path& directory,
                                            std::uint64_t shard_bytes = default_hf_shard_bytes) {
    const std::string context = "writing '" + directory.string() + "'";
    require(shard_bytes > 0, errc::invalid_argument, context, ": shards of 0 bytes");
    detail::AtomicDirectory output(directory, context);
    const std::map<std::string, std::string> metadata = detail::safetensors_metadata_of(model);
    const nlohmann::json config = detail::hf_config_of(model, context);

    // Shards are written as they fill (one shard's bytes in memory at a time) under provisional
    // names, renamed once their count is known.
    HfDirectoryReport report;
    std::vector<std::vector<std::string>> shard_names;
    SafetensorsWriter shard;
    std::uint64_t in_shard = 0;
    const auto provisional = [&](std::size_t k) { return output.path() / ("shard-" + std::to_string(k) + ".partial"); };
    const auto close_shard = [&] {
        for (const auto& [key, value] : metadata) shard.set_metadata(key, value);
        shard.write(provisional(shard_names.size() - 1));
        shard = SafetensorsWriter();
        in_shard = 0;
    };
    detail::for_each_safetensors_tensor(model, context, [&](std::string name, dtype type, const Shape& shape, std::vector<std::uint8_t> bytes) {
        if (in_shard > 0 && bytes.size() > shard_bytes - std::min(shard_bytes, in_shard)) close_shard();
        if (in_shard == 0 && shard.tensor_count() == 0) shard_names.emplace_back();
        in_shard += bytes.size();
        report.tensor_bytes += bytes.size();
        shard_names.back().push_back(name);
        shard.add_raw(std::move(name), type, shape, std::move(bytes));
    });
    if (shard_names.empty()) shard_names.emplace_back();  // no tensor: one empty model.safetensors
    close_shard();
    for (std::size_t k = 0; k < shard_names.size(); ++k) {
        std::error_code problem;
        std::filesystem::rename(provisional(k), output.path() / detail::hf_shard_name(k, shard_names.size()), problem);
        require(!problem, errc::io, context, ": cannot rename shard ", k, ": ", problem.message());
    }
    detail::finish_hf_directory(output, config, model.files, shard_names, report);
    output.commit();
    return report;
}

}  // namespace nwc
