// nwc::ModelReader: a model file opened for reading one tensor at a time, so that compressing a
// model needs memory for the tensors in flight, not for the model.
//
// Read me first:
// - open() detects and validates the model as load_model_file() does (the same functions: a
//   sharded Hugging Face directory's index, placement and duplicate checks, the config, the
//   directory's small files, safetensors headers) and reads no tensor values. outline() is the
//   ModelFile that load_model_file() returns, with every tensor's values and raw bytes left empty:
//   names, dtypes, shapes and order, the source record, the files.
// - read(i) returns tensor i as load_model_file() holds it (float32 values, or the raw bytes of an
//   integer tensor), read from the memory-mapped file; the mapped pages it read are then handed
//   back (release_pages), so reading a whole model tensor by tensor never makes the input resident
//   whole. Thread-safe: several workers may read different tensors at once. with_stored_bytes(i, f)
//   hands f the tensor's bytes where the file holds them instead: the lossless method codes a
//   BF16 tensor from them, rtn, gptq, ecsq and tcq widen blocks of rows (no float32 copy).
// - A llama2.c file is read whole at open() (its RoPE tables are compared against recomputed ones,
//   and the format has no index of tensors); read(i) copies from it. Such models are small.
// - with_model_tensor / outline_of let the pipeline take a ModelFile in memory or a ModelReader
//   through one code path (pipeline_codec.hpp's compress_model_into).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <utility>

#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"

namespace nwc {

/// A model file whose tensors are read on demand (see the header comment).
class ModelReader {
public:
    /// Opens the model at `path` (any format load_model_file() reads); errors as load_model_file().
    static ModelReader open(const std::filesystem::path& path) {
        ModelReader reader;
        const ModelFormat format = detect_model_format(path);
        if (format == ModelFormat::llama2c) {
            reader.m_whole = detail::load_llama2c(path);
            reader.m_outline = *reader.m_whole;
            for (ModelTensor& tensor : reader.m_outline.tensors) tensor.values = {}, tensor.raw_bytes = {};
            return reader;
        }
        reader.m_mapped = format == ModelFormat::safetensors ? detail::open_plain_safetensors(path) : detail::open_hf(path);
        return reader;
    }

    /// The model without its values (see the header comment).
    const ModelFile& outline() const noexcept { return m_mapped ? m_mapped->outline : m_outline; }
    std::size_t tensor_count() const noexcept { return outline().tensors.size(); }
    std::int64_t weight_count() const noexcept { return outline().weight_count(); }

    /// Tensor `index` with its values (or raw bytes), as load_model_file() holds it.
    ModelTensor read(std::size_t index) const {
        require(index < tensor_count(), errc::invalid_argument, "ModelReader: tensor ", index, " of ", tensor_count());
        if (m_whole) return m_whole->tensors[index];
        ModelTensor tensor = m_mapped->outline.tensors[index];
        release_pages(m_mapped->read_into(index, tensor));
        return tensor;
    }

    /// Whether with_stored_bytes() can run: a safetensors or Hugging Face source (a llama2.c model
    /// is held whole, converted at open()).
    bool maps_tensors() const noexcept { return m_mapped.has_value(); }

    /// f(the bytes of tensor `index` as its file stores them: little-endian elements of its dtype),
    /// a view of the mapped file, for a method that codes a tensor without a float32 copy of it
    /// (Codec::compress_from_file). f may hand ranges back with release_pages as it reads; the
    /// rest is handed back after. Thread-safe as read().
    template <class F>
    decltype(auto) with_stored_bytes(std::size_t index, F&& f) const {
        require(m_mapped && index < tensor_count(), errc::invalid_argument, "ModelReader: stored bytes of tensor ", index, " of ", tensor_count(),
                m_mapped ? "" : " (a llama2.c model is not mapped)");
        const std::span<const std::uint8_t> bytes = m_mapped->stored_bytes(index);
        struct HandBack {
            std::span<const std::uint8_t> bytes;
            ~HandBack() { release_pages(bytes); }
        } hand_back{bytes};
        return std::forward<F>(f)(bytes);
    }

    /// The whole model in memory: what load_model_file() returns.
    ModelFile read_all() const {
        if (m_whole) return *m_whole;
        ModelFile model = m_mapped->outline;
        for (std::size_t index = 0; index < model.tensors.size(); ++index) model.tensors[index] = read(index);
        return model;
    }

private:
    ModelReader() = default;

    std::optional<detail::SafetensorsModel> m_mapped;  // safetensors and Hugging Face sources
    std::optional<ModelFile> m_whole;                  // llama2.c
    ModelFile m_outline;                               // llama2.c: m_whole without values
};

/// The model's names, dtypes, shapes and source record, for a model in memory or a reader.
inline const ModelFile& outline_of(const ModelFile& model) noexcept { return model; }
inline const ModelFile& outline_of(const ModelReader& reader) noexcept { return reader.outline(); }

/// f(tensor `index` with its values): the model's own tensor, or one read for the call.
template <class F>
decltype(auto) with_model_tensor(const ModelFile& model, std::size_t index, F&& f) {
    return std::forward<F>(f)(model.tensors[index]);
}
template <class F>
decltype(auto) with_model_tensor(const ModelReader& reader, std::size_t index, F&& f) {
    const ModelTensor tensor = reader.read(index);
    return std::forward<F>(f)(tensor);
}

}  // namespace nwc
