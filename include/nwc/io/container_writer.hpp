// Writing .nwc containers: deterministic bytes, written atomically.
//
// The writer validates everything the reader will check (names, methods, codec references, shapes,
// segment sizes, passthrough sizes), so a file it writes always opens. Tensors keep the order they
// were added in (the source model's order, which decompress reproduces); the same calls always give
// the same bytes. CRCs are computed once, when a tensor or codec is added.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/container_format.hpp"
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

/// Collects codec blobs, tensors and file metadata, then writes one .nwc container.
class ContainerWriter {
public:
    /// Stores a codec blob (the decoder half of a neural codec, opaque here) and returns its index
    /// for ContainerTensor::codec_index. Adding identical bytes again returns the first index.
    std::int32_t add_codec(std::vector<std::uint8_t> blob) {
        const std::uint32_t crc = crc32c(blob);
        for (std::size_t index = 0; index < m_codecs.size(); ++index)
            if (m_codecs[index].crc == crc && m_codecs[index].bytes == blob) return std::int32_t(index);
        require(m_codecs.size() < container_format::max_codecs, errc::limit, "container writer: more than ", container_format::max_codecs, " codecs");
        m_codecs.push_back({std::move(blob), crc});
        return std::int32_t(m_codecs.size() - 1);
    }
    /// Free-form file-level metadata, e.g. JSON naming the source format and its config.
    void set_file_metadata(std::string text) {
        require(text.size() <= container_format::max_file_metadata_bytes, errc::limit, "container writer: file metadata of ", text.size(), " bytes exceeds ",
                container_format::max_file_metadata_bytes);
        m_file_metadata = std::move(text);
    }
    /// Adds a tensor; errc::invalid_argument (errc::limit for sizes) if the reader would reject it.
    void add_tensor(ContainerTensor tensor) {
        namespace format = container_format;
        require(detail::is_valid_tensor_name(tensor.name), errc::invalid_argument, "container writer: tensor name '", tensor.name,
                "' is empty, longer than ", format::max_name_bytes, " bytes, not UTF-8 or holds control characters");
        const std::string context = "container writer: tensor '" + tensor.name + "'";
        require(!m_names.contains(tensor.name), errc::invalid_argument, context, " added twice");
        require(m_tensors.size() < format::max_tensors, errc::limit, context, ": more than ", format::max_tensors, " tensors");
        require(detail::is_valid_method(tensor.method), errc::invalid_argument, context, ": method '", tensor.method, "' is not 1..32 of [a-z0-9_-]");
        require(tensor.codec_index >= -1 && tensor.codec_index < std::int32_t(m_codecs.size()), errc::invalid_argument, context, ": codec index ",
                tensor.codec_index, " but ", m_codecs.size(), " codecs were added");
        require(checked_numel(tensor.shape.dims()) <= format::max_elements, errc::limit, context, ": more than ", format::max_elements, " elements");
        if (tensor.method == "raw") {
            require(tensor.codec_index == -1, errc::invalid_argument, context, ": a raw tensor refers to no codec");
            const std::uint64_t expected = checked_tensor_bytes(tensor.original_dtype, tensor.shape.dims(), context);
            require(tensor.payload.size() == expected, errc::invalid_argument, context, ": raw payload of ", tensor.payload.size(), " bytes, the shape needs ",
                    expected);
        }
        if (tensor.segment_sizes.empty()) tensor.segment_sizes.push_back(tensor.payload.size());
        require(tensor.segment_sizes.size() <= format::max_segments, errc::limit, context, ": more than ", format::max_segments, " segments");
        std::uint64_t covered = 0;
        for (std::uint64_t size : tensor.segment_sizes) {
            require(size <= tensor.payload.size() - covered, errc::invalid_argument, context, ": segment sizes exceed the payload of ", tensor.payload.size(),
                    " bytes");
            covered += size;
        }
        require(covered == tensor.payload.size(), errc::invalid_argument, context, ": segments cover ", covered, " of ", tensor.payload.size(), " payload bytes");
        m_names.insert(tensor.name);
        const std::uint32_t metadata_crc = crc32c(tensor.metadata);
        const std::uint32_t payload_crc = crc32c(tensor.payload);
        m_tensors.push_back({std::move(tensor), metadata_crc, payload_crc});
    }

    std::size_t tensor_count() const noexcept { return m_tensors.size(); }
    std::size_t codec_count() const noexcept { return m_codecs.size(); }

    /// The whole container in memory.
    std::vector<std::uint8_t> serialize() const {
        const Plan plan = make_plan();
        std::vector<std::uint8_t> file;
        file.reserve(std::size_t(plan.file_size));
        emit(plan, [&](std::span<const std::uint8_t> bytes) { file.insert(file.end(), bytes.begin(), bytes.end()); });
        return file;
    }
    /// Writes the container atomically: an existing file at `path` changes only if all of it was
    /// written (`max_bytes` simulates a full disk: errc::io past it).
    void write(const std::filesystem::path& path, std::uint64_t max_bytes = UINT64_MAX) const {
        const Plan plan = make_plan();
        AtomicFileWriter file(path, max_bytes);
        emit(plan, [&](std::span<const std::uint8_t> bytes) { file.write(bytes); });
        file.commit();
    }
    /// Bytes that serialize() returns and write() writes.
    std::uint64_t serialized_size() const { return make_plan().file_size; }

private:
    struct CodecBlob {
        std::vector<std::uint8_t> bytes;
        std::uint32_t crc;
    };
    struct Stored {
        ContainerTensor tensor;
        std::uint32_t metadata_crc;
        std::uint32_t payload_crc;
    };
    struct Plan {
        std::vector<std::uint8_t> prefix;                  // header + directory
        std::vector<std::span<const std::uint8_t>> regions;  // in file order
        std::vector<std::uint64_t> offsets;                  // of each region
        std::uint64_t file_size = 0;
    };

    std::vector<std::span<const std::uint8_t>> regions() const {
        std::vector<std::span<const std::uint8_t>> result;
        for (const CodecBlob& codec : m_codecs) result.emplace_back(codec.bytes);
        for (const Stored& stored : m_tensors) {
            result.emplace_back(stored.tensor.metadata);
            result.emplace_back(stored.tensor.payload);
        }
        return result;
    }
    std::vector<std::uint8_t> directory(const std::vector<std::uint64_t>& offsets) const {
        ByteWriter out;
        out.put_u32(std::uint32_t(m_codecs.size()));
        out.put_u32(std::uint32_t(m_tensors.size()));
        out.put_string(m_file_metadata);
        std::size_t region = 0;
        for (const CodecBlob& codec : m_codecs) {
            out.put_u64(offsets[region++]);
            out.put_u64(codec.bytes.size());
            out.put_u32(codec.crc);
        }
        for (const Stored& stored : m_tensors) {
            const ContainerTensor& tensor = stored.tensor;
            out.put_u16(std::uint16_t(tensor.name.size()));
            out.put_bytes({reinterpret_cast<const std::uint8_t*>(tensor.name.data()), tensor.name.size()});
            out.put_u8(std::uint8_t(tensor.original_dtype));
            out.put_u8(std::uint8_t(tensor.shape.rank()));
            for (std::int64_t dim : tensor.shape.dims()) out.put_i64(dim);
            out.put_u8(std::uint8_t(tensor.method.size()));
            out.put_bytes({reinterpret_cast<const std::uint8_t*>(tensor.method.data()), tensor.method.size()});
            out.put_i32(tensor.codec_index);
            out.put_u64(offsets[region++]);
            out.put_u64(tensor.metadata.size());
            out.put_u32(stored.metadata_crc);
            out.put_u64(offsets[region++]);
            out.put_u64(tensor.payload.size());
            out.put_u32(stored.payload_crc);
            out.put_u32(std::uint32_t(tensor.segment_sizes.size()));
            for (std::uint64_t size : tensor.segment_sizes) out.put_u64(size);
        }
        return out.take();
    }
    Plan make_plan() const {
        Plan plan;
        plan.regions = regions();
        // The directory's size does not depend on the offsets it holds (fixed-width fields).
        const std::uint64_t directory_size = directory(std::vector<std::uint64_t>(plan.regions.size(), 0)).size();
        require(directory_size <= container_format::max_directory_bytes, errc::limit, "container writer: directory of ", directory_size, " bytes exceeds ",
                container_format::max_directory_bytes);
        std::uint64_t cursor = container_format::header_bytes + directory_size;
        for (const auto& region : plan.regions) {
            cursor = detail::align_region(cursor);
            plan.offsets.push_back(cursor);
            cursor += region.size();
        }
        plan.file_size = cursor;
        const std::vector<std::uint8_t> listing = directory(plan.offsets);
        ByteWriter header;
        header.put_bytes(container_format::magic);
        header.put_u32(container_format::version);
        header.put_u32(0);  // flags: none defined in version 1
        header.put_u64(plan.file_size);
        header.put_u64(listing.size());
        header.put_u32(crc32c(listing));
        header.put_u32(crc32c(header.bytes()));
        plan.prefix = header.take();
        plan.prefix.insert(plan.prefix.end(), listing.begin(), listing.end());
        return plan;
    }
    template <class Sink>
    static void emit(const Plan& plan, Sink&& sink) {
        static constexpr std::uint8_t zeros[container_format::region_alignment] = {};
        sink(std::span<const std::uint8_t>(plan.prefix));
        std::uint64_t cursor = plan.prefix.size();
        for (std::size_t index = 0; index < plan.regions.size(); ++index) {
            sink(std::span<const std::uint8_t>(zeros, std::size_t(plan.offsets[index] - cursor)));
            sink(plan.regions[index]);
            cursor = plan.offsets[index] + plan.regions[index].size();
        }
    }

    std::vector<CodecBlob> m_codecs;
    std::vector<Stored> m_tensors;
    std::set<std::string, std::less<>> m_names;
    std::string m_file_metadata;
};

}  // namespace nwc
