// Writing .nwc containers: deterministic bytes, written atomically, in memory or streamed.
//
// ContainerWriter collects every tensor in memory (serialize(), write()); ContainerStreamWriter
// appends each tensor's regions to the temporary file as it is added and holds only the directory
// (and the codec blobs, to deduplicate them), so compressing a model needs memory for the tensors
// in flight, not for the file; ContainerSizer keeps only the layout (the size a file would have).
// All validate through one ContainerLayout (what the reader will check, so a file they write
// always opens); the two writers give byte-identical files for the same calls.
// Tensors keep the order they were added in (the source model's order, which decompress
// reproduces); codec blobs come first, so a codec cannot be added after the first tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/io/container_layout.hpp"
#include "nwc/io/tensor_bytes.hpp"

namespace nwc {

/// A passthrough tensor: stored as-is in its own dtype, method "raw", no codec.
inline ContainerTensor make_raw_tensor(std::string name, dtype type, Shape shape, std::span<const std::uint8_t> bytes) {
    ContainerTensor tensor;
    tensor.name = std::move(name);
    tensor.original_dtype = type;
    tensor.shape = shape;
    tensor.method = "raw";
    tensor.payload.assign(bytes.begin(), bytes.end());
    return tensor;
}

/// A passthrough tensor from float32 values, stored as `stored_as` (F32, F16 or BF16).
inline ContainerTensor make_raw_tensor(std::string name, TensorView<const float> values, dtype stored_as) {
    const std::vector<std::uint8_t> bytes = encode_float32(values, stored_as);
    return make_raw_tensor(std::move(name), stored_as, values.shape(), bytes);
}

namespace detail {

/// The CRC-32C a directory record holds: the metadata bytes, then the payload bytes.
inline std::uint32_t container_tensor_crc(std::span<const std::uint8_t> metadata, std::span<const std::uint8_t> payload) noexcept {
    return crc32c(payload, crc32c(metadata));
}

/// Hands a tensor's regions to `sink` as `placement` lays them out: metadata, zeros, payload.
template <class Sink>
void emit_tensor_regions(Sink&& sink, const ContainerLayout::Placement& placement, std::span<const std::uint8_t> metadata,
                         std::span<const std::uint8_t> payload) {
    static constexpr std::uint8_t zeros[container_format::payload_alignment] = {};
    sink(metadata);
    sink(std::span<const std::uint8_t>(zeros, std::size_t(placement.payload_offset - placement.metadata_offset - metadata.size())));
    sink(payload);
}

}  // namespace detail

/// Collects codec blobs, tensors and file metadata in memory, then writes one .nwc container.
class ContainerWriter {
public:
    /// Stores a codec blob (the decoder half of a neural codec, opaque here) and returns its index
    /// for ContainerTensor::codec_index. Adding identical bytes again returns the first index; new
    /// blobs only before the first tensor (errc::invalid_argument after it).
    std::int32_t add_codec(std::vector<std::uint8_t> blob) {
        const std::uint32_t crc = crc32c(blob);
        for (std::size_t index = 0; index < m_codecs.size(); ++index)
            if (m_codecs[index].crc == crc && m_codecs[index].bytes == blob) return std::int32_t(index);
        const std::int32_t index = m_layout.add_codec(blob.size(), crc);
        m_codecs.push_back({std::move(blob), crc});
        return index;
    }
    /// Free-form file-level metadata, e.g. JSON naming the source format and its config.
    void set_file_metadata(std::string text) { m_layout.set_file_metadata(std::move(text)); }
    /// Adds a tensor; errc::invalid_argument (errc::limit for sizes) if the reader would reject it.
    void add_tensor(ContainerTensor tensor) {
        const std::uint32_t crc = detail::container_tensor_crc(tensor.metadata, tensor.payload);
        const ContainerLayout::Placement placement = m_layout.add_tensor(ContainerTensorInfo::of(tensor), crc);
        m_tensors.push_back({std::move(tensor.metadata), std::move(tensor.payload), placement});
    }

    std::size_t tensor_count() const noexcept { return m_layout.tensor_count(); }
    std::size_t codec_count() const noexcept { return m_layout.codec_count(); }
    /// The directory and layout so far (sizes, file_size()).
    const ContainerLayout& layout() const noexcept { return m_layout; }

    /// The whole container in memory.
    std::vector<std::uint8_t> serialize() const {
        std::vector<std::uint8_t> file;
        file.reserve(std::size_t(serialized_size()));
        emit([&](std::span<const std::uint8_t> bytes) { file.insert(file.end(), bytes.begin(), bytes.end()); });
        return file;
    }
    /// Writes the container atomically: an existing file at `path` changes only if all of it was
    /// written (`max_bytes` simulates a full disk: errc::io past it).
    void write(const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX) const {
        AtomicFileWriter file(path, max_bytes);
        emit([&](std::span<const std::uint8_t> bytes) { file.write(bytes); });
        file.commit();
    }
    /// Bytes that serialize() returns and write() writes.
    std::uint64_t serialized_size() const noexcept { return m_layout.file_size(); }

private:
    struct CodecBlob {
        std::vector<std::uint8_t> bytes;
        std::uint32_t crc;
    };
    struct StoredTensor {
        std::vector<std::uint8_t> metadata;
        std::vector<std::uint8_t> payload;
        ContainerLayout::Placement placement;
    };

    template <class Sink>
    void emit(Sink&& sink) const {
        const auto header = ContainerLayout::header();
        sink(std::span<const std::uint8_t>(header));
        for (const CodecBlob& codec : m_codecs) sink(std::span<const std::uint8_t>(codec.bytes));
        for (const StoredTensor& tensor : m_tensors) detail::emit_tensor_regions(sink, tensor.placement, tensor.metadata, tensor.payload);
        sink(std::span<const std::uint8_t>(m_layout.directory_and_footer()));
    }

    ContainerLayout m_layout;
    std::vector<CodecBlob> m_codecs;
    std::vector<StoredTensor> m_tensors;
};

/// The size a container would have, with nothing kept or written: what rate control's passes need
/// (the same layout, so the same size as ContainerWriter for the same calls; CRCs are not
/// computed). Codec blobs are not compared, so add each one once.
class ContainerSizer {
public:
    std::int32_t add_codec(const std::vector<std::uint8_t>& blob) { return m_layout.add_codec(blob.size(), 0); }
    void set_file_metadata(std::string text) { m_layout.set_file_metadata(std::move(text)); }
    void add_tensor(const ContainerTensor& tensor) { m_layout.add_tensor(ContainerTensorInfo::of(tensor), 0); }
    const ContainerLayout& layout() const noexcept { return m_layout; }

private:
    ContainerLayout m_layout;
};

/// Writes a .nwc container as its tensors arrive: each add_tensor() appends the tensor's regions
/// to a temporary file next to `path`; commit() appends the directory and footer and renames the
/// file onto `path`. Without commit() (an exception, a dropped writer) nothing changes at `path`
/// and the temporary is removed. Same validation and same bytes as ContainerWriter.
class ContainerStreamWriter {
public:
    /// `max_bytes` simulates a full disk (errc::io past it).
    explicit ContainerStreamWriter(const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX) : m_file(path, max_bytes), m_path(path.string()) {
        const auto header = ContainerLayout::header();
        write(header);
    }
    ContainerStreamWriter(const ContainerStreamWriter&) = delete;
    ContainerStreamWriter& operator=(const ContainerStreamWriter&) = delete;

    /// As ContainerWriter::add_codec; the blob is written now (and kept, to deduplicate).
    std::int32_t add_codec(std::vector<std::uint8_t> blob) {
        check_open();
        const std::uint32_t crc = crc32c(blob);
        for (std::size_t index = 0; index < m_codecs.size(); ++index)
            if (m_codec_crcs[index] == crc && m_codecs[index] == blob) return std::int32_t(index);
        const std::int32_t index = m_layout.add_codec(blob.size(), crc);
        write(blob);
        m_codecs.push_back(std::move(blob));
        m_codec_crcs.push_back(crc);
        return index;
    }
    /// Free-form file-level metadata (it lives in the directory: any time before commit()).
    void set_file_metadata(std::string text) {
        check_open();
        m_layout.set_file_metadata(std::move(text));
    }
    /// Validates `tensor` as ContainerWriter::add_tensor does, then appends its regions to the file.
    void add_tensor(const ContainerTensor& tensor) { add_tensor(ContainerTensorInfo::of(tensor), tensor.metadata, tensor.payload); }
    /// The same from a description and the bytes it describes (their sizes must match it).
    void add_tensor(const ContainerTensorInfo& info, std::span<const std::uint8_t> metadata, std::span<const std::uint8_t> payload) {
        check_open();
        require(info.metadata_size == metadata.size() && info.payload_size == payload.size(), errc::invalid_argument, "container writer: tensor '", info.name,
                "' described with ", info.metadata_size, " + ", info.payload_size, " bytes, given ", metadata.size(), " + ", payload.size());
        const ContainerLayout::Placement placement = m_layout.add_tensor(info, detail::container_tensor_crc(metadata, payload));
        detail::emit_tensor_regions([&](std::span<const std::uint8_t> bytes) { write(bytes); }, placement, metadata, payload);
    }

    std::size_t tensor_count() const noexcept { return m_layout.tensor_count(); }
    std::size_t codec_count() const noexcept { return m_layout.codec_count(); }
    const ContainerLayout& layout() const noexcept { return m_layout; }
    /// The size the file will have if committed now.
    std::uint64_t file_size() const noexcept { return m_layout.file_size(); }

    /// Appends the directory and footer, flushes, and renames the file onto the target path.
    void commit() {
        check_open();
        write(m_layout.directory_and_footer());
        try {
            m_file.commit();
        } catch (...) {
            m_failed = true;
            throw;
        }
        m_committed = true;
    }

private:
    void check_open() const {
        require(!m_committed, errc::invalid_argument, "container writer for '", m_path, "': already committed");
        require(!m_failed, errc::io, "container writer for '", m_path, "': an earlier write failed");
    }
    void write(std::span<const std::uint8_t> bytes) {
        try {
            m_file.write(bytes);
        } catch (...) {
            m_failed = true;  // the file no longer matches the layout: nothing more can go right
            throw;
        }
    }

    AtomicFileWriter m_file;
    std::string m_path;
    ContainerLayout m_layout;
    std::vector<std::vector<std::uint8_t>> m_codecs;
    std::vector<std::uint32_t> m_codec_crcs;
    bool m_failed = false;
    bool m_committed = false;
};

}  // namespace nwc
