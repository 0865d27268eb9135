// The directory of a .nwc container being written, and the layout of its regions.
//
// ContainerLayout is everything a container holds except the bytes of its regions. Both writers
// keep one, so they validate alike and place every region alike (byte-identical files); on its own
// it is the size-only mode: describe the codecs and tensors by their sizes, read file_size(), and
// never hold a payload (what rate control needs to aim at a whole-file size).
//
// Directory records are encoded as tensors arrive (a name keeps only what it does not share with
// the best of the 64 names before it, a method refers to the table of methods in order of first use), so the directory is held as the
// bytes it will be written as, and file_size() costs nothing.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/io/tensor_bytes.hpp"

namespace nwc {

/// The directory and region layout of a container being written (also the size-only mode).
class ContainerLayout {
public:
    /// Where a tensor's regions go (file offsets).
    struct Placement {
        std::uint64_t metadata_offset = 0;
        std::uint64_t payload_offset = 0;  ///< after zero padding when the payload is aligned
        std::uint64_t end = 0;             ///< where the next region starts
    };

    /// Records a codec blob of `size` bytes with CRC-32C `crc` and returns its index. Codec blobs
    /// precede every tensor in the file, so none can be added after the first tensor.
    std::int32_t add_codec(std::uint64_t size, std::uint32_t crc = 0) {
        namespace format = container_format;
        require(m_tensor_count == 0, errc::invalid_argument, "container writer: codec ", m_codecs.size(),
                " added after the first tensor (codec blobs precede the tensors in the file: add codecs first)");
        require(m_codecs.size() < format::max_codecs, errc::limit, "container writer: more than ", format::max_codecs, " codecs");
        require(size <= max_file_bytes - m_cursor, errc::limit, "container writer: codec of ", size, " bytes makes the file too large");
        const std::uint64_t record = detail::varint_size(size) + 4;
        check_directory_size(record + count_growth(m_codecs.size()), "codec");
        m_codecs.push_back({size, crc});
        m_codec_records += record;
        m_cursor += size;
        return std::int32_t(m_codecs.size() - 1);
    }

    /// Free-form file-level metadata, e.g. JSON naming the source format and its config.
    void set_file_metadata(std::string text) {
        require(text.size() <= container_format::max_file_metadata_bytes, errc::limit, "container writer: file metadata of ", text.size(), " bytes exceeds ",
                container_format::max_file_metadata_bytes);
        const std::uint64_t now = detail::varint_size(m_file_metadata.size()) + m_file_metadata.size();
        const std::uint64_t then = detail::varint_size(text.size()) + text.size();
        if (then > now) check_directory_size(then - now, "file metadata");
        m_file_metadata = std::move(text);
    }

    /// Validates `tensor` as a reader would (errc::invalid_argument, errc::limit for sizes), then
    /// records it with `crc` (CRC-32C of its metadata bytes followed by its payload bytes). A
    /// rejected tensor changes nothing.
    Placement add_tensor(const ContainerTensorInfo& tensor, std::uint32_t crc = 0) {
        namespace format = container_format;
        require(detail::is_valid_tensor_name(tensor.name), errc::invalid_argument, "container writer: tensor name '", tensor.name,
                "' is empty, longer than ", format::max_name_bytes, " bytes, not UTF-8 or holds control characters");
        const std::string context = "container writer: tensor '" + tensor.name + "'";
        require(!m_names.contains(tensor.name), errc::invalid_argument, context, " added twice");
        require(m_tensor_count < format::max_tensors, errc::limit, context, ": more than ", format::max_tensors, " tensors");
        require(m_name_bytes + tensor.name.size() <= format::max_total_name_bytes, errc::limit, context, ": names take more than ",
                format::max_total_name_bytes, " bytes");
        require(detail::is_valid_method(tensor.method), errc::invalid_argument, context, ": method '", tensor.method, "' is not 1..32 of [a-z0-9_-]");
        require(tensor.codec_index >= -1 && tensor.codec_index < std::int32_t(m_codecs.size()), errc::invalid_argument, context, ": codec index ",
                tensor.codec_index, " but ", m_codecs.size(), " codecs were added");
        require(checked_numel(tensor.shape.dims()) <= format::max_elements, errc::limit, context, ": more than ", format::max_elements, " elements");
        if (tensor.method == "raw") {
            require(tensor.codec_index == -1, errc::invalid_argument, context, ": a raw tensor refers to no codec");
            const std::uint64_t expected = checked_tensor_bytes(tensor.original_dtype, tensor.shape.dims(), context);
            require(tensor.payload_size == expected, errc::invalid_argument, context, ": raw payload of ", tensor.payload_size, " bytes, the shape needs ",
                    expected);
        }
        const std::size_t segments = tensor.segment_sizes.empty() ? 1 : tensor.segment_sizes.size();
        require(segments <= format::max_segments - m_segment_count, errc::limit, context, ": more than ", format::max_segments, " segments in the file");
        std::uint64_t covered = 0;
        for (std::uint64_t size : tensor.segment_sizes) {
            require(size <= tensor.payload_size - covered, errc::invalid_argument, context, ": segment sizes exceed the payload of ", tensor.payload_size,
                    " bytes");
            covered += size;
        }
        require(tensor.segment_sizes.empty() || covered == tensor.payload_size, errc::invalid_argument, context, ": segments cover ", covered, " of ",
                tensor.payload_size, " payload bytes");
        const std::uint64_t room = max_file_bytes - m_cursor;  // m_cursor <= max_file_bytes always
        require(tensor.metadata_size <= room && tensor.payload_size <= room - tensor.metadata_size &&
                    room - tensor.metadata_size - tensor.payload_size >= container_format::payload_alignment,
                errc::limit, context, ": makes the file larger than 2^62 bytes");

        std::size_t method = 0;
        while (method < m_methods.size() && m_methods[method] != tensor.method) ++method;
        const bool new_method = method == m_methods.size();
        require(!new_method || m_methods.size() < format::max_methods, errc::limit, context, ": more than ", format::max_methods, " methods");
        const std::vector<std::uint8_t> record = encode_record(tensor, method, crc);
        std::uint64_t growth = record.size() + count_growth(m_tensor_count);
        if (new_method) growth += detail::varint_size(tensor.method.size()) + tensor.method.size() + count_growth(m_methods.size());
        check_directory_size(growth, context.c_str());

        m_records.put_bytes(record);
        if (new_method) {
            m_methods.push_back(tensor.method);
            m_method_records += detail::varint_size(tensor.method.size()) + tensor.method.size();
        }
        m_names.insert(tensor.name);
        if (m_recent_names.size() == detail::name_base_window) m_recent_names.pop_front();
        m_recent_names.push_back(tensor.name);
        m_name_bytes += tensor.name.size();
        m_segment_count += segments;
        ++m_tensor_count;
        Placement placement;
        placement.metadata_offset = m_cursor;
        placement.payload_offset = detail::container_payload_offset(m_cursor + tensor.metadata_size, tensor.payload_size);
        placement.end = placement.payload_offset + tensor.payload_size;
        m_cursor = placement.end;
        return placement;
    }

    std::size_t tensor_count() const noexcept { return m_tensor_count; }
    std::size_t codec_count() const noexcept { return m_codecs.size(); }
    /// Where the next region goes; after the last one, where the directory starts.
    std::uint64_t regions_end() const noexcept { return m_cursor; }
    std::uint64_t directory_size() const noexcept {
        return detail::varint_size(m_codecs.size()) + detail::varint_size(m_methods.size()) + detail::varint_size(m_tensor_count) +
               detail::varint_size(m_file_metadata.size()) + m_file_metadata.size() + m_method_records + m_codec_records + m_records.size();
    }
    /// The exact size of the file these codecs and tensors make.
    std::uint64_t file_size() const noexcept { return m_cursor + directory_size() + container_format::footer_bytes; }

    /// The fixed header every version-2 file starts with.
    static std::array<std::uint8_t, container_format::header_bytes> header() noexcept {
        std::array<std::uint8_t, container_format::header_bytes> bytes{};
        for (std::size_t k = 0; k < sizeof container_format::magic; ++k) bytes[k] = container_format::magic[k];
        const std::uint32_t version = container_format::version;  // flags (bytes 12-15) stay 0
        std::memcpy(bytes.data() + 8, &version, 4);
        return bytes;
    }
    /// The directory and the footer: the last bytes of the file.
    std::vector<std::uint8_t> directory_and_footer() const {
        ByteWriter out;
        detail::put_varint(out, m_codecs.size());
        detail::put_varint(out, m_methods.size());
        detail::put_varint(out, m_tensor_count);
        detail::put_varint(out, m_file_metadata.size());
        out.put_bytes({reinterpret_cast<const std::uint8_t*>(m_file_metadata.data()), m_file_metadata.size()});
        for (const std::string& method : m_methods) {
            detail::put_varint(out, method.size());
            out.put_bytes({reinterpret_cast<const std::uint8_t*>(method.data()), method.size()});
        }
        for (const Codec& codec : m_codecs) {
            detail::put_varint(out, codec.size);
            out.put_u32(codec.crc);
        }
        out.put_bytes(m_records.bytes());
        const std::uint64_t directory = out.size();
        NWC_ASSERT(directory == directory_size());
        const std::uint32_t directory_crc = crc32c(out.bytes());
        out.put_u32(std::uint32_t(directory));
        out.put_u32(directory_crc);
        const auto fixed = header();
        std::uint32_t footer_crc = crc32c(fixed);
        footer_crc = crc32c(std::span<const std::uint8_t>(out.bytes()).subspan(std::size_t(directory), 8), footer_crc);
        out.put_u32(footer_crc);
        out.put_bytes(container_format::end_magic);
        return out.take();
    }

private:
    struct Codec {
        std::uint64_t size;
        std::uint32_t crc;
    };
    // Keeps every offset and size far from 2^64, so sums of them never wrap.
    static constexpr std::uint64_t max_file_bytes = std::uint64_t(1) << 62;

    // Bytes a count's varint grows by when the count goes from `count` to `count + 1`.
    static std::uint64_t count_growth(std::uint64_t count) noexcept { return detail::varint_size(count + 1) - detail::varint_size(count); }

    void check_directory_size(std::uint64_t growth, const char* what) const {
        require(directory_size() + growth <= container_format::max_directory_bytes, errc::limit, "container writer: ", what, ": the directory would exceed ",
                container_format::max_directory_bytes, " bytes");
    }

    std::vector<std::uint8_t> encode_record(const ContainerTensorInfo& tensor, std::size_t method, std::uint32_t crc) const {
        ByteWriter out;
        // The base: the recent name that leaves the fewest bytes to write (ties: the nearest).
        std::size_t base = 0, best_cost = SIZE_MAX;
        detail::NameSharing shared;
        for (std::size_t back = 0; back < std::max<std::size_t>(1, m_recent_names.size()); ++back) {
            const std::string_view candidate = m_recent_names.empty() ? std::string_view() : m_recent_names[m_recent_names.size() - 1 - back];
            const detail::NameSharing sharing = detail::name_sharing(candidate, tensor.name);
            const std::size_t middle = tensor.name.size() - sharing.prefix - sharing.suffix;
            const std::size_t cost = detail::varint_size(back) + detail::varint_size(sharing.prefix) + detail::varint_size(sharing.suffix) +
                                     detail::varint_size(middle) + middle;
            if (cost < best_cost) best_cost = cost, base = back, shared = sharing;
        }
        const std::size_t middle = tensor.name.size() - shared.prefix - shared.suffix;
        detail::put_varint(out, base);
        detail::put_varint(out, shared.prefix);
        detail::put_varint(out, shared.suffix);
        detail::put_varint(out, middle);
        out.put_bytes({reinterpret_cast<const std::uint8_t*>(tensor.name.data()) + shared.prefix, middle});
        out.put_u8(std::uint8_t(unsigned(tensor.original_dtype) | unsigned(tensor.shape.rank()) << 4));
        for (std::int64_t dim : tensor.shape.dims()) detail::put_varint(out, std::uint64_t(dim));
        detail::put_varint(out, method);
        detail::put_varint(out, std::uint64_t(tensor.codec_index + 1));
        detail::put_varint(out, tensor.metadata_size);
        detail::put_varint(out, tensor.payload_size);
        const std::size_t segments = tensor.segment_sizes.empty() ? 1 : tensor.segment_sizes.size();
        detail::put_varint(out, segments);
        for (std::size_t k = 0; k + 1 < segments; ++k) detail::put_varint(out, tensor.segment_sizes[k]);  // the last takes the rest
        out.put_u32(crc);
        return out.take();
    }

    std::vector<Codec> m_codecs;
    std::uint64_t m_codec_records = 0;
    std::vector<std::string> m_methods;  // in order of first use
    std::uint64_t m_method_records = 0;
    std::string m_file_metadata;
    ByteWriter m_records;
    std::size_t m_tensor_count = 0;
    std::set<std::string, std::less<>> m_names;
    std::deque<std::string> m_recent_names;  // the last name_base_window names, oldest first
    std::uint64_t m_name_bytes = 0;
    std::uint64_t m_segment_count = 0;
    std::uint64_t m_cursor = container_format::header_bytes;
};

}  // namespace nwc
