// nwc::ModelFile: any supported model file as one ordered list of named tensors, and back. The one
// entry point that opens a model file: load_model_file (tensors as stored), llama_weights_of /
// read_llama_weights (a Llama model as LlamaWeights, for the forward pass).
//
// Read me first:
// - Three sources, detected by CONTENT, never by extension (detect_model_format):
//     safetensors  u64 header length N, then N bytes of JSON starting with '{' (a .safetensors file
//                  with a Llama config.json beside it counts as hf_llama);
//     llama2c      7 int32 header whose implied size equals the file size exactly;
//     hf_llama     a directory with config.json and model.safetensors (or a sharded index);
//     hf           the same for an architecture whose forward pass nwc lacks (Qwen2's biases,
//                  Qwen3's q/k norms, Gemma, ...: llm::hf_forward_pass_missing): its tensors
//                  are compressed and written back like any, calibration and .bin are refused.
// - Every tensor keeps its name, original dtype and shape; floating tensors are held as float32
//   (exact: F16 and BF16 widen losslessly), other dtypes (I32, U8) as their raw bytes.
//   llama2.c models use the Hugging Face names of LlamaWeights (model.layers.N....) in checkpoint
//   order; HF models keep the names, order (shard by shard, name order) and row layout of their files.
// - `source` (JSON) holds what writing back needs: the llama2.c header, the HF config.json, the
//   safetensors __metadata__. It travels as the .nwc file's file metadata.
// - `files`: a Hugging Face directory's other small files (tokenizer.json, tokenizer.model,
//   generation_config.json, ...: every top-level regular file of at most 64 MiB that is not
//   config.json, weights or an index, and whose name does not start with '.'), byte for byte, so
//   that the directory nwc decompress writes loads with its tokenizer. The pipeline carries them as
//   raw U8 tensors named "__nwc__.file.<name>" (pipeline_codec.hpp).
// - llama2.c files carry two RoPE tables that run.c never reads. They are not weights: they are
//   recomputed as llama2.c's export computes them, and the few entries where the file differs from
//   that computation (float rounding in another libm) are kept in `rope_corrections` (flat index,
//   float bits), so a decompressed .bin has exactly the source's tables.
// - Writing (write_model_file) picks the format from the output extension: `.bin` writes llama2.c
//   (only for llama2c or hf_llama sources), `.safetensors` writes safetensors with the original
//   dtypes (a llama2c source is written with HF names and HF's q/k row order, as write_hf_llama
//   does, so it loads in transformers next to hf_config_json()). Both writes are atomic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/bit_io.hpp"
#include "nwc/io/hf_llama.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/llm/llama_weights.hpp"

namespace nwc {

/// Where a model came from.
enum class ModelFormat : std::uint8_t { safetensors = 0, llama2c = 1, hf_llama = 2, hf = 3 };

/// "safetensors", "llama2c", "hf_llama", "hf".
constexpr std::string_view model_format_name(ModelFormat format) noexcept {
    switch (format) {
        case ModelFormat::safetensors: return "safetensors";
        case ModelFormat::llama2c: return "llama2c";
        case ModelFormat::hf_llama: return "hf_llama";
        case ModelFormat::hf: return "hf";
    }
    return "?";
}

/// The format model_format_name() names; nullopt for another name.
constexpr std::optional<ModelFormat> model_format_named(std::string_view name) noexcept {
    for (ModelFormat format : {ModelFormat::safetensors, ModelFormat::llama2c, ModelFormat::hf_llama, ModelFormat::hf})
        if (model_format_name(format) == name) return format;
    return std::nullopt;
}

/// Whether the model came with a Hugging Face config.json (kept in source["hf_config"]).
constexpr bool is_hf_format(ModelFormat format) noexcept { return format == ModelFormat::hf_llama || format == ModelFormat::hf; }

/// One tensor of a model.
struct ModelTensor {
    std::string name;
    dtype original_dtype = dtype::f32;
    Shape shape;
    Tensor<float> values;                 ///< float32 values (F32, F16, BF16 tensors); empty otherwise
    std::vector<std::uint8_t> raw_bytes;  ///< the stored bytes of I32 / U8 tensors; empty otherwise

    bool is_floating() const noexcept { return is_floating_dtype(original_dtype); }
};

/// A file of a Hugging Face model directory carried as it is (see the header comment).
struct SourceFile {
    std::string name;  ///< a plain file name (detail::is_plain_file_name)
    std::vector<std::uint8_t> bytes;
    friend bool operator==(const SourceFile&, const SourceFile&) = default;
};

/// A model as an ordered list of named tensors plus what writing it back needs.
struct ModelFile {
    ModelFormat format = ModelFormat::safetensors;
    std::vector<ModelTensor> tensors;
    /// llama2c: {"llama2c": {header fields}}; hf_llama, hf: {"hf_config": config.json};
    /// safetensors, hf_llama, hf: {"safetensors_metadata": {...}}. Always {"source_format": name}.
    nlohmann::json source = nlohmann::json::object();
    /// llama2.c RoPE table entries that differ from llama2c_rope_tables(): pairs (flat index into
    /// real then imag, float bits), as an I32 [k, 2] tensor; no values for none.
    Tensor<std::int32_t> rope_corrections;
    /// hf_llama, hf read from a directory: its other small files, by name (see the header comment).
    std::vector<SourceFile> files;

    /// Elements of every tensor: the denominator of bits per weight.
    std::int64_t weight_count() const noexcept {
        std::int64_t count = 0;
        for (const auto& tensor : tensors) count += tensor.shape.numel();
        return count;
    }
    const ModelTensor* find(std::string_view name) const noexcept {
        for (const auto& tensor : tensors)
            if (tensor.name == name) return &tensor;
        return nullptr;
    }
};

namespace detail {

inline nlohmann::json llama_config_json(const llm::LlamaConfig& config) {
    return {{"dim", config.dim},           {"hidden_dim", config.hidden_dim}, {"n_layers", config.n_layers},
            {"n_heads", config.n_heads},   {"n_kv_heads", config.n_kv_heads}, {"vocab_size", config.vocab_size},
            {"seq_len", config.seq_len},   {"shared_classifier", config.shared_classifier}};
}

inline llm::LlamaConfig llama_config_from_json(const nlohmann::json& value, std::string_view context) {
    require(value.is_object(), errc::corrupt, context, ": llama2.c header is not a JSON object");
    llm::LlamaConfig config;
    try {
        config.dim = value.at("dim").get<int>();
        config.hidden_dim = value.at("hidden_dim").get<int>();
        config.n_layers = value.at("n_layers").get<int>();
        config.n_heads = value.at("n_heads").get<int>();
        config.n_kv_heads = value.at("n_kv_heads").get<int>();
        config.vocab_size = value.at("vocab_size").get<int>();
        config.seq_len = value.at("seq_len").get<int>();
        config.shared_classifier = value.at("shared_classifier").get<bool>();
    } catch (const nlohmann::json::exception& problem) {
        fail(errc::corrupt, context, ": llama2.c header: ", problem.what());
    }
    config.validate(context);
    return config;
}

/// The llama2.c config a model's source JSON records: errc::corrupt when it has none (a container's
/// source metadata is input; fuzz_container found `source.at("llama2c")` throwing JSON's own
/// exception for a container whose "llama2c" key was renamed).
inline llm::LlamaConfig llama2c_config_of(const nlohmann::json& source, std::string_view context) {
    const auto found = source.find("llama2c");
    require(found != source.end(), errc::corrupt, context, ": the model's source has no llama2.c header (\"llama2c\")");
    return llama_config_from_json(*found, context);
}

/// The Hugging Face config.json a model's source JSON records: errc::corrupt when it has none.
inline const nlohmann::json& hf_config_in(const nlohmann::json& source, std::string_view context) {
    const auto found = source.find("hf_config");
    require(found != source.end() && found->is_object(), errc::corrupt, context, ": the model's source has no Hugging Face config");
    return *found;
}

// The u64 header length, then a JSON object ("{}" at least) that fits in the file.
inline bool looks_like_safetensors(std::span<const std::uint8_t> bytes) noexcept {
    constexpr std::size_t shortest_json = 2;
    if (bytes.size() < safetensors_length_bytes + shortest_json) return false;
    std::uint64_t header = 0;
    std::memcpy(&header, bytes.data(), safetensors_length_bytes);
    return header >= shortest_json && header <= bytes.size() - safetensors_length_bytes && bytes[safetensors_length_bytes] == '{';
}

inline bool looks_like_llama2c(std::span<const std::uint8_t> bytes) {
    try {
        llm::detail::parse_llama2c_header(bytes, "probe");
        return true;
    } catch (const error&) {
        return false;
    }
}

// hf_llama or hf for the config.json of an HF model; errc::corrupt for a broken Llama config.
inline ModelFormat hf_format_of(const std::filesystem::path& config) {
    return llm::hf_forward_pass_missing(llm::detail::read_json_file(config), config.string()) ? ModelFormat::hf : ModelFormat::hf_llama;
}

// A .safetensors file with an HF config.json beside it is an HF checkpoint of one shard (a config
// that does not read as one leaves it a plain safetensors file).
inline std::optional<ModelFormat> hf_format_beside(const std::filesystem::path& file) {
    const auto config = (file.has_parent_path() ? file.parent_path() : std::filesystem::path(".")) / "config.json";
    if (!std::filesystem::is_regular_file(config)) return std::nullopt;
    try {
        return hf_format_of(config);
    } catch (const error&) {
        return std::nullopt;
    }
}

/// A safetensors model (one file or the shards of a Hugging Face directory) opened without reading
/// its values: `outline` holds every tensor's name, dtype and shape (no values) and the source
/// record; tensor i lives in files[file_of[i]], read by read_into().
struct SafetensorsModel {
    ModelFile outline;
    std::vector<SafetensorsFile> files;
    std::vector<std::size_t> file_of;

    /// Reads outline tensor `index` from its mapped file into `tensor`: float32 values for a
    /// floating dtype, the stored bytes otherwise. Returns the mapped bytes it read.
    std::span<const std::uint8_t> read_into(std::size_t index, ModelTensor& tensor) const {
        const std::span<const std::uint8_t> bytes = stored_bytes(index);
        if (is_floating_dtype(outline.tensors[index].original_dtype))
            tensor.values = files[file_of[index]].read_float32(outline.tensors[index].name);
        else
            tensor.raw_bytes.assign(bytes.begin(), bytes.end());
        return bytes;
    }
    /// The bytes outline tensor `index` has in its mapped file.
    std::span<const std::uint8_t> stored_bytes(std::size_t index) const { return files[file_of[index]].raw_bytes(outline.tensors[index].name); }
    /// The whole model in memory.
    ModelFile read_all() && {
        for (std::size_t index = 0; index < outline.tensors.size(); ++index) read_into(index, outline.tensors[index]);
        return std::move(outline);
    }
};

// Appends `file`'s tensors (name order) to `opened` without reading them.
inline void add_safetensors_outline(SafetensorsModel& opened, SafetensorsFile file) {
    for (const SafetensorsTensorInfo& info : file.tensors()) {
        opened.outline.tensors.push_back({info.name, info.type, info.shape, {}, {}});
        opened.file_of.push_back(opened.files.size());
    }
    opened.files.push_back(std::move(file));
}

/// The largest file of a model directory carried as a SourceFile.
inline constexpr std::uintmax_t max_source_file_bytes = std::uintmax_t(64) << 20;

/// A name a file can be written under inside a directory, and nowhere else: not empty, at most 255
/// bytes, no '/', '\' or NUL, not starting with '.' (no ".", "..", hidden files).
inline bool is_plain_file_name(std::string_view name) noexcept {
    return !name.empty() && name.size() <= 255 && name.front() != '.' && name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

/// The files of model directory `directory` that travel with its weights (see the header comment),
/// in name order.
inline std::vector<SourceFile> source_files_of(const std::filesystem::path& directory) {
    static constexpr std::string_view weight_suffixes[] = {".safetensors", ".index.json", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx"};
    std::vector<SourceFile> files;
    for (const auto& item : std::filesystem::directory_iterator(directory)) {
        const std::string name = item.path().filename().string();
        bool weights = false;
        for (std::string_view suffix : weight_suffixes) weights = weights || name.ends_with(suffix);
        if (!item.is_regular_file() || !is_plain_file_name(name) || name == "config.json" || weights || item.file_size() > max_source_file_bytes)
            continue;
        files.push_back({name, item.file_size() == 0 ? std::vector<std::uint8_t>{} : read_file(item.path())});
    }
    std::sort(files.begin(), files.end(), [](const SourceFile& a, const SourceFile& b) { return a.name < b.name; });
    return files;
}

inline SafetensorsModel open_hf(const std::filesystem::path& path) {
    const llm::HfModelFiles files = llm::hf_model_files(path);
    nlohmann::json config = llm::detail::read_json_file(files.config);
    SafetensorsModel opened;
    ModelFile& model = opened.outline;
    model.format = llm::hf_forward_pass_missing(config, "'" + files.config.string() + "'") ? ModelFormat::hf : ModelFormat::hf_llama;
    nlohmann::json metadata = nlohmann::json::object();
    for (const auto& shard_path : files.shards) {
        SafetensorsFile shard = SafetensorsFile::open(shard_path);
        files.check_placement(shard_path, shard);
        for (const auto& [key, value] : shard.metadata()) metadata[key] = value;
        for (const auto& info : shard.tensors())
            require(model.find(info.name) == nullptr, errc::corrupt, "'", shard_path.string(), "': tensor '", info.name, "' appears in two shards");
        add_safetensors_outline(opened, std::move(shard));
    }
    files.check_complete([&](const std::string& name) { return model.find(name) != nullptr; });
    model.source = {{"source_format", model_format_name(model.format)}, {"hf_config", std::move(config)}, {"safetensors_metadata", std::move(metadata)}};
    if (std::filesystem::is_directory(path)) model.files = source_files_of(path);
    return opened;
}

inline SafetensorsModel open_plain_safetensors(const std::filesystem::path& path) {
    SafetensorsModel opened;
    opened.outline.format = ModelFormat::safetensors;
    SafetensorsFile file = SafetensorsFile::open(path);
    nlohmann::json metadata = nlohmann::json::object();
    for (const auto& [key, value] : file.metadata()) metadata[key] = value;
    opened.outline.source = {{"source_format", "safetensors"}, {"safetensors_metadata", std::move(metadata)}};
    add_safetensors_outline(opened, std::move(file));
    return opened;
}

inline ModelFile load_llama2c(const std::filesystem::path& path) {
    llm::Llama2cModel source = llm::read_llama2c(path);
    ModelFile model;
    model.format = ModelFormat::llama2c;
    model.source = {{"source_format", "llama2c"}, {"llama2c", llama_config_json(source.weights.config)}};
    source.weights.for_each_tensor([&](const std::string& name, Tensor<float>& values, const Shape& shape) {
        model.tensors.push_back({name, dtype::f32, shape, std::move(values), {}});
    });
    const auto [real, imag] = llm::llama2c_rope_tables(source.weights.config);
    std::vector<std::int32_t> corrections;
    const auto compare = [&](const Tensor<float>& stored, const Tensor<float>& computed, std::int64_t base) {
        for (std::int64_t i = 0; i < stored.numel(); ++i)
            if (float_bits(stored[i]) != float_bits(computed[i])) {
                corrections.push_back(std::int32_t(base + i));
                corrections.push_back(std::int32_t(float_bits(stored[i])));
            }
    };
    compare(source.rope_real, real, 0);
    compare(source.rope_imag, imag, real.numel());
    if (!corrections.empty()) {
        const std::int64_t count = std::int64_t(corrections.size() / 2);
        model.rope_corrections = Tensor<std::int32_t>(Shape{count, 2}, std::move(corrections));
    }
    return model;
}

/// One RoPE correction as the packed layouts store it: entries skipped since the previous
/// correction, and stored minus computed float bits.
struct RopeCorrectionPair {
    std::uint64_t gap = 0;
    std::int64_t difference = 0;
};

/// The (gap, difference) pairs of `corrections` against llama2c_rope_tables(config), in index
/// order; errc::invalid_argument (naming `caller`) unless the entries increase and lie in the
/// tables. With `skip_unchanged`, an entry equal to the computed value is left out (its gap carries
/// over to the next one).
inline std::vector<RopeCorrectionPair> rope_correction_pairs(const Tensor<std::int32_t>& corrections, const llm::LlamaConfig& config,
                                                             bool skip_unchanged, std::string_view caller) {
    const auto [real, imag] = llm::llama2c_rope_tables(config);
    const std::int64_t real_count = real.numel(), all = real_count + imag.numel();
    std::vector<RopeCorrectionPair> pairs;
    std::int64_t previous = -1, written = -1;
    for (std::int64_t k = 0; k < (corrections.values().empty() ? 0 : corrections.rows()); ++k) {
        const std::int64_t index = corrections(k, 0);
        require(index > previous && index < all, errc::invalid_argument, caller, ": correction ", k, " names entry ", index,
                " (entries must increase, below ", all, ")");
        previous = index;
        const float computed = index < real_count ? real[index] : imag[index - real_count];
        const std::int64_t difference = std::int64_t(std::uint32_t(corrections(k, 1))) - std::int64_t(float_bits(computed));
        if (skip_unchanged && difference == 0) continue;  // the computed value itself: nothing to correct
        pairs.push_back({std::uint64_t(index - written - 1), difference});
        written = index;
    }
    return pairs;
}

/// The RoPE corrections as the bytes a container stores (docs/format/container.md): per correction,
/// in index order, varint(index - previous index - 1) then zigzag varint(stored bits - computed
/// bits), the computed table being llama2c_rope_tables(config). Float rounding in another libm
/// moves an entry by a few ulps, so most corrections take 2 bytes instead of 8. (The layout of
/// files before pack_rope_correction_bits; kept to test that they still read.)
inline std::vector<std::uint8_t> pack_rope_corrections(const Tensor<std::int32_t>& corrections, const llm::LlamaConfig& config) {
    ByteWriter writer;
    for (const RopeCorrectionPair& pair : rope_correction_pairs(corrections, config, false, "pack_rope_corrections")) {
        detail::put_varint(writer, pair.gap);
        detail::put_varint(writer, zigzag(pair.difference));
    }
    return writer.take();
}

/// Unpacks corrections coded as (gap, difference) pairs: next(values) reads one pair, returning false
/// at the end; checks each entry against the tables (errc::corrupt naming `context`).
template <class NextPair>
Tensor<std::int32_t> unpack_rope_pairs(const llm::LlamaConfig& config, std::string_view context, NextPair&& next) {
    const auto [real, imag] = llm::llama2c_rope_tables(config);
    const std::int64_t real_count = real.numel(), all = real_count + imag.numel();
    std::vector<std::int32_t> values;
    std::int64_t previous = -1;
    std::uint64_t gap = 0;
    std::int64_t difference = 0;
    while (next(gap, difference)) {
        require(gap < std::uint64_t(all - previous - 1), errc::corrupt, context, ": RoPE correction ", values.size() / 2, " skips ", gap,
                " entries past entry ", previous, " of ", all);
        const std::int64_t index = previous + 1 + std::int64_t(gap);
        const float computed = index < real_count ? real[index] : imag[index - real_count];
        const std::int64_t bits = std::int64_t(float_bits(computed)) + difference;
        require(bits >= 0 && bits <= std::int64_t(UINT32_MAX), errc::corrupt, context, ": RoPE correction of entry ", index, " is not a float");
        values.push_back(std::int32_t(index));
        values.push_back(std::int32_t(std::uint32_t(bits)));
        previous = index;
    }
    const std::int64_t count = std::int64_t(values.size() / 2);
    return count == 0 ? Tensor<std::int32_t>() : Tensor<std::int32_t>(Shape{count, 2}, std::move(values));
}

/// Reads what pack_rope_corrections wrote (files before the bit-packed layout); throws
/// nwc::error(corrupt) naming `context` for an entry beyond the tables or a value that is not a
/// 32-bit pattern.
inline Tensor<std::int32_t> unpack_rope_corrections(std::span<const std::uint8_t> bytes, const llm::LlamaConfig& config, std::string_view context) {
    ByteReader reader(bytes, std::string(context));
    return unpack_rope_pairs(config, context, [&](std::uint64_t& gap, std::int64_t& difference) {
        if (reader.at_end()) return false;
        gap = detail::get_varint(reader, "RoPE correction gap");
        difference = unzigzag(detail::get_varint(reader, "RoPE correction"));
        return true;
    });
}

/// The RoPE corrections bit-packed (docs/format/methods.md): varint count C, then a bit stream
/// (entropy/bit_io.hpp): 4 bits k, then per correction in index order EG_k(index - previous - 1),
/// one sign bit and EG_0(|stored bits - computed bits| - 1); zero padding. Gaps are geometric-like
/// (mean ~20 for stories260K) and differences +-1 ulp: ~8 bits per correction against the 16 of
/// pack_rope_corrections' two varints. A correction equal to the computed value is not written.
inline std::vector<std::uint8_t> pack_rope_correction_bits(const Tensor<std::int32_t>& corrections, const llm::LlamaConfig& config) {
    const std::vector<RopeCorrectionPair> pairs = rope_correction_pairs(corrections, config, true, "pack_rope_correction_bits");
    ByteWriter writer;
    put_varint(writer, pairs.size());
    if (pairs.empty()) return writer.take();
    int best = 0;
    std::uint64_t best_bits = ~std::uint64_t(0);
    for (int k = 0; k < 16; ++k) {
        std::uint64_t total = 0;
        for (const RopeCorrectionPair& pair : pairs) total += std::uint64_t(exp_golomb_bits(pair.gap, k));
        if (total < best_bits) best_bits = total, best = k;
    }
    BitWriter bits;
    bits.put(std::uint64_t(best), 4);
    for (const RopeCorrectionPair& pair : pairs) {
        bits.put_exp_golomb(pair.gap, best);
        bits.put(pair.difference < 0, 1);
        bits.put_exp_golomb(std::uint64_t(pair.difference < 0 ? -pair.difference : pair.difference) - 1, 0);
    }
    writer.put_bytes(bits.finish());
    return writer.take();
}

/// Reads what pack_rope_correction_bits wrote: errc::corrupt for an entry beyond the tables, a
/// value that is not a 32-bit pattern, a count the bytes cannot hold, bits left over or nonzero
/// padding; errc::truncated for a cut count.
inline Tensor<std::int32_t> unpack_rope_correction_bits(std::span<const std::uint8_t> bytes, const llm::LlamaConfig& config, std::string_view context) {
    ByteReader reader(bytes, std::string(context));
    const std::uint64_t count = get_varint(reader, "RoPE correction count");
    const std::span<const std::uint8_t> stream = bytes.subspan(reader.offset());
    require(count <= 8 * std::uint64_t(stream.size()), errc::corrupt, context, ": ", count, " RoPE corrections in ", stream.size(), " bytes");
    if (count == 0) {
        require(stream.empty(), errc::corrupt, context, ": ", stream.size(), " bytes after a count of 0");
        return {};
    }
    const std::string where(context);
    BitReader bits(stream, where, reader.offset());
    const int k = int(bits.get(4));
    std::uint64_t read = 0;
    Tensor<std::int32_t> result = unpack_rope_pairs(config, context, [&](std::uint64_t& gap, std::int64_t& difference) {
        if (read == count) return false;
        ++read;
        gap = bits.get_exp_golomb(k, 40);
        const bool negative = bits.get_bit() != 0;
        const std::int64_t magnitude = std::int64_t(bits.get_exp_golomb(0, 33)) + 1;
        difference = negative ? -magnitude : magnitude;
        return true;
    });
    bits.expect_end();
    return result;
}

inline llm::LlamaWeights llama2c_weights_of(const ModelFile& model, std::string_view context) {
    const llm::LlamaConfig config = llama2c_config_of(model.source, context);
    llm::LlamaWeights weights = llm::LlamaWeights::zeros(config);
    weights.for_each_tensor([&](const std::string& name, Tensor<float>& target, const Shape& shape) {
        const ModelTensor* tensor = model.find(name);
        require(tensor != nullptr, errc::corrupt, context, ": llama2.c tensor '", name, "' is missing");
        require(tensor->shape == shape && tensor->is_floating(), errc::corrupt, context, ": tensor '", name, "' has the wrong shape or dtype");
        target = Tensor<float>(shape, tensor->values.values());
    });
    return weights;
}

inline llm::LlamaWeights hf_weights_of(const ModelFile& model, std::string_view context) {
    llm::HfWeightsAssembler assembler(llm::parse_hf_config(hf_config_in(model.source, context), context));
    for (const ModelTensor& tensor : model.tensors) {
        if (!assembler.is_weight(tensor.name)) continue;
        assembler.add(tensor.name, tensor.shape, [&] {
            require(tensor.is_floating(), errc::corrupt, context, ": tensor '", tensor.name, "' is stored as ", dtype_name(tensor.original_dtype));
            return Tensor<float>(tensor.shape, tensor.values.values());
        }, context);
    }
    return std::move(assembler).finish(context);
}

}  // namespace detail

/// The format of the model at `path`, from its content (see the header comment); errc::unsupported
/// for anything else, errc::io if it cannot be read.
inline ModelFormat detect_model_format(const std::filesystem::path& path) {
    if (std::filesystem::is_directory(path)) {
        require(std::filesystem::exists(path / "config.json"), errc::unsupported, "'", path.string(),
                "' is a directory without config.json (not a Hugging Face model)");
        return detail::hf_format_of(path / "config.json");
    }
    const MappedFile file(path);
    if (detail::looks_like_safetensors(file.bytes())) return detail::hf_format_beside(path).value_or(ModelFormat::safetensors);
    if (detail::looks_like_llama2c(file.bytes())) return ModelFormat::llama2c;
    fail(errc::unsupported, "'", path.string(), "' is neither a safetensors file, a llama2.c model nor a Hugging Face model directory");
}

/// Loads a model of any supported format (detect_model_format decides which).
inline ModelFile load_model_file(const std::filesystem::path& path) {
    switch (detect_model_format(path)) {
        case ModelFormat::hf_llama:
        case ModelFormat::hf: return detail::open_hf(path).read_all();
        case ModelFormat::llama2c: return detail::load_llama2c(path);
        case ModelFormat::safetensors: break;
    }
    return detail::open_plain_safetensors(path).read_all();
}

/// The model as LlamaWeights (llama2.c row order), for calibration and llama2.c output; nullopt
/// for a plain safetensors model or an hf one (why_not_llama says why).
inline std::optional<llm::LlamaWeights> llama_weights_of(const ModelFile& model, std::string_view context = "model") {
    if (model.format == ModelFormat::llama2c) return detail::llama2c_weights_of(model, context);
    if (model.format == ModelFormat::hf_llama) return detail::hf_weights_of(model, context);
    return std::nullopt;
}

/// Why llama_weights_of(model) has no weights, for messages: "came from a plain safetensors file"
/// or "is Qwen2ForCausalLM (...), whose forward pass nwc does not have: <the feature>".
inline std::string why_not_llama(const ModelFile& model) {
    if (model.format != ModelFormat::hf) return "came from a plain " + std::string(model_format_name(model.format)) + " file";
    const auto config = model.source.find("hf_config");
    if (config == model.source.end() || !config->is_object()) return "has no Hugging Face config";
    std::string reason = "is " + llm::hf_architecture_name(*config) + ", whose forward pass nwc does not have";
    try {
        if (const auto missing = llm::hf_forward_pass_missing(*config, "config.json")) reason += " (" + *missing + ")";
    } catch (const error& problem) {
        reason += " (" + problem.message() + ")";
    }
    return reason;
}

/// The weights of the Llama model at `path` (llama2.c file, HF directory, or .safetensors file with
/// a Llama config.json beside it; detected as load_model_file does). errc::unsupported for a
/// model that is not a Llama model.
inline llm::LlamaWeights read_llama_weights(const std::filesystem::path& path) {
    const std::string context = "'" + path.string() + "'";
    const ModelFile model = load_model_file(path);
    std::optional<llm::LlamaWeights> weights = llama_weights_of(model, context);
    require(weights.has_value(), errc::unsupported, context, " is not a Llama model: it ", why_not_llama(model));
    return std::move(*weights);
}

namespace detail {
/// The __metadata__ a safetensors output of `model` carries: the source's, and "format": "pt" for
/// a llama2.c source (what transformers expects).
inline std::map<std::string, std::string> safetensors_metadata_of(const ModelFile& model) {
    std::map<std::string, std::string> result;
    if (const auto metadata = model.source.find("safetensors_metadata"); metadata != model.source.end() && metadata->is_object())
        for (const auto& [key, value] : metadata->items())
            if (value.is_string()) result[key] = value.get<std::string>();
    if (model.format == ModelFormat::llama2c) result["format"] = "pt";
    return result;
}

/// Calls add(name, dtype, shape, bytes) for every tensor a safetensors output of `model` holds, in
/// model order: a llama2.c model's weights under their HF names with HF's q/k row order as F32,
/// every other model's tensors as they were stored.
template <class Add>
void for_each_safetensors_tensor(const ModelFile& model, const std::string& context, Add&& add) {
    if (model.format == ModelFormat::llama2c) {
        const llm::LlamaWeights weights = llama2c_weights_of(model, context);
        weights.for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) {
            const int heads = llm::detail::rope_heads_of(weights.config, name);
            const TensorView<const float> values = tensor.view();
            add(name, dtype::f32, tensor.shape(), encode_float32(heads > 0 ? llm::permute_rows_to_hf(values, heads).view() : values, dtype::f32));
        });
        return;
    }
    for (const ModelTensor& tensor : model.tensors)
        add(tensor.name, tensor.original_dtype, tensor.shape,
            tensor.is_floating() ? encode_float32(tensor.values.view(), tensor.original_dtype) : tensor.raw_bytes);
}
}  // namespace detail

/// Whether write_model_file can write `model` as a llama2.c `.bin`.
inline bool can_write_llama2c(const ModelFile& model) noexcept { return model.format == ModelFormat::llama2c || model.format == ModelFormat::hf_llama; }

/// Writes `model` atomically to `path`: `.bin` -> llama2.c, `.safetensors` -> safetensors (see the
/// header comment). errc::invalid_argument for another extension, errc::unsupported for a `.bin`
/// of a model llama2.c cannot hold.
inline void write_model_file(const ModelFile& model, const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX) {
    const std::string extension = path.extension().string();
    const std::string context = "writing '" + path.string() + "'";
    if (extension == ".bin") {
        require(can_write_llama2c(model), errc::unsupported, context, ": a llama2.c file needs a Llama model; this one ", why_not_llama(model));
        if (model.format == ModelFormat::hf_llama) {
            llm::write_llama2c(path, detail::hf_weights_of(model, context), max_bytes);
            return;
        }
        llm::Llama2cModel out;
        out.weights = detail::llama2c_weights_of(model, context);
        std::tie(out.rope_real, out.rope_imag) = llm::llama2c_rope_tables(out.weights.config);
        const std::int64_t real_count = out.rope_real.numel(), all = real_count + out.rope_imag.numel();
        for (std::int64_t k = 0; k < (model.rope_corrections.values().empty() ? 0 : model.rope_corrections.rows()); ++k) {
            const std::int64_t index = model.rope_corrections(k, 0);
            require(index >= 0 && index < all, errc::corrupt, context, ": RoPE correction ", k, " names entry ", index, " of ", all);
            const float value = float_from_bits(std::uint32_t(model.rope_corrections(k, 1)));
            (index < real_count ? out.rope_real[index] : out.rope_imag[index - real_count]) = value;
        }
        llm::write_llama2c(path, out, max_bytes);
        return;
    }
    require(extension == ".safetensors", errc::invalid_argument, context, ": the output must end in .safetensors or .bin");
    SafetensorsWriter writer;
    for (const auto& [key, value] : detail::safetensors_metadata_of(model)) writer.set_metadata(key, value);
    detail::for_each_safetensors_tensor(model, context, [&](std::string name, dtype type, const Shape& shape, std::vector<std::uint8_t> bytes) {
        writer.add_raw(std::move(name), type, shape, std::move(bytes));
    });
    writer.write(path, max_bytes);
}

}  // namespace nwc
