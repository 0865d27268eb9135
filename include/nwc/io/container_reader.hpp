// Reading .nwc containers: memory-mapped, validated structurally on open, checksummed lazily.
//
// Read me first, the file is hostile:
//  - open() checks the magic, the header CRC, the version, the file size, then the directory's
//    CRC, and only then parses the directory with a ByteReader: every count is checked against the
//    directory bytes that remain before anything is allocated, every region against the canonical
//    layout (so regions lie inside the file and never overlap).
//  - Tensor payloads, tensor metadata and codec blobs are checked against their CRC-32C on first
//    access, not on open: reading one tensor never reads another's bytes. verify() checks all of
//    them and the zero padding, for `nwc inspect --verify` and for tests.
//  - CRCs catch accidents, not attackers: a file with recomputed CRCs must still give clean errors,
//    which is why the parse does not lean on them (and the tests mutate files and fix the CRCs up).
// Copies share the bytes and the record of what was verified; const methods are thread-safe.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/io/tensor_bytes.hpp"

namespace nwc {

/// An opened .nwc container; any tensor can be read without touching the others.
class ContainerReader {
public:
    /// Maps and validates `path` (structure and directory CRC; region CRCs are checked on access).
    static ContainerReader open(const std::filesystem::path& path) {
        auto mapping = std::make_shared<MappedFile>(path);
        const std::span<const std::uint8_t> bytes = mapping->bytes();
        return ContainerReader(std::move(mapping), bytes, "container '" + path.string() + "'");
    }
    /// Validates a container in memory; the caller keeps `bytes` alive as long as the reader.
    static ContainerReader from_bytes(std::span<const std::uint8_t> bytes, const std::string& context = "container (memory)") {
        return ContainerReader(nullptr, bytes, context);
    }
    /// Same, taking ownership (so `from_bytes(writer.serialize())` cannot dangle).
    static ContainerReader from_bytes(std::vector<std::uint8_t>&& bytes, const std::string& context = "container (memory)") {
        auto owned = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
        const std::span<const std::uint8_t> view(*owned);
        return ContainerReader(std::move(owned), view, context);
    }

    std::size_t tensor_count() const noexcept { return m_entries.size(); }
    /// Directory entry `index` (errc::invalid_argument if out of range).
    const ContainerEntry& entry(std::size_t index) const {
        require(index < m_entries.size(), errc::invalid_argument, m_context, ": tensor index ", index, " out of range (", m_entries.size(), " tensors)");
        return m_entries[index];
    }
    /// Index of the tensor called `name`, if any.
    std::optional<std::size_t> find(std::string_view name) const noexcept {
        auto found = std::lower_bound(m_by_name.begin(), m_by_name.end(), name, [&](std::size_t index, std::string_view key) { return m_entries[index].name < key; });
        if (found != m_by_name.end() && m_entries[*found].name == name) return *found;
        return std::nullopt;
    }
    /// Index of the tensor called `name`; errc::invalid_argument if there is none.
    std::size_t index_of(std::string_view name) const {
        const auto found = find(name);
        if (!found) fail(errc::invalid_argument, m_context, ": no tensor named '", name, "'");
        return *found;
    }
    /// Tensor `index`'s codec metadata, checked against its CRC on first access.
    std::span<const std::uint8_t> metadata(std::size_t index) const {
        const ContainerEntry& record = entry(index);
        return checked_region(record.metadata_offset, record.metadata_size, record.metadata_crc, m_tensor_verified[index], 1u, "metadata", index);
    }
    /// Tensor `index`'s payload (all segments), checked against its CRC on first access.
    std::span<const std::uint8_t> payload(std::size_t index) const {
        const ContainerEntry& record = entry(index);
        return checked_region(record.payload_offset, record.payload_size, record.payload_crc, m_tensor_verified[index], 2u, "payload", index);
    }
    /// Segment `segment` of tensor `index`'s payload (the whole payload is CRC-checked first).
    std::span<const std::uint8_t> segment(std::size_t index, std::size_t segment) const {
        const std::span<const std::uint8_t> bytes = payload(index);
        const ContainerEntry& record = m_entries[index];
        require(segment < record.segment_count(), errc::invalid_argument, m_context, ": tensor '", record.name, "' has ", record.segment_count(),
                " segments, not ", segment + 1);
        const std::uint64_t begin = record.segment_bounds[segment];
        return bytes.subspan(std::size_t(begin), std::size_t(record.segment_bounds[segment + 1] - begin));
    }
    /// A passthrough ("raw") tensor of F32, F16 or BF16 converted to float32.
    Tensor<float> read_raw_float32(std::size_t index) const {
        const ContainerEntry& record = entry(index);
        require(record.method == "raw", errc::invalid_argument, m_context, ": tensor '", record.name, "' is coded with '", record.method, "', not raw");
        return decode_float32(record.original_dtype, record.shape, payload(index), m_context + ": tensor '" + record.name + "'");
    }

    std::size_t codec_count() const noexcept { return m_codecs.size(); }
    const ContainerCodecEntry& codec_entry(std::size_t index) const {
        require(index < m_codecs.size(), errc::invalid_argument, m_context, ": codec index ", index, " out of range (", m_codecs.size(), " codecs)");
        return m_codecs[index];
    }
    /// Codec blob `index`, checked against its CRC on first access.
    std::span<const std::uint8_t> codec(std::size_t index) const {
        const ContainerCodecEntry& record = codec_entry(index);
        return checked_region(record.offset, record.size, record.crc, m_codec_verified[index], 1u, "codec", index);
    }
    /// The file-level metadata text (covered by the directory CRC).
    std::string_view file_metadata() const noexcept { return m_file_metadata; }
    /// Size of the container in bytes.
    std::uint64_t total_size() const noexcept { return m_bytes.size(); }
    std::uint32_t version() const noexcept { return container_format::version; }
    const std::string& context() const noexcept { return m_context; }

    /// Checks every region CRC and that every padding byte is zero.
    void verify() const {
        for (std::size_t index = 0; index < m_codecs.size(); ++index) codec(index);
        for (std::size_t index = 0; index < m_entries.size(); ++index) {
            metadata(index);
            payload(index);
        }
        std::uint64_t cursor = m_directory_end;
        const auto check_gap = [&](std::uint64_t offset, std::uint64_t size) {
            for (std::uint64_t at = cursor; at < offset; ++at)
                if (m_bytes[std::size_t(at)] != 0) fail(errc::corrupt, m_context, ": padding byte at offset ", at, " is not zero");
            cursor = offset + size;
        };
        for (const auto& record : m_codecs) check_gap(record.offset, record.size);
        for (const auto& record : m_entries) {
            check_gap(record.metadata_offset, record.metadata_size);
            check_gap(record.payload_offset, record.payload_size);
        }
    }

private:
    ContainerReader(std::shared_ptr<const void> owner, std::span<const std::uint8_t> bytes, std::string context)
        : m_owner(std::move(owner)), m_bytes(bytes), m_context(std::move(context)) {
        parse();
        // Value-initialized: nothing verified yet (libstdc++ 12's make_shared<T[]> needs copyable T).
        m_tensor_verified.reset(new std::atomic<std::uint8_t>[m_entries.size()]());
        m_codec_verified.reset(new std::atomic<std::uint8_t>[m_codecs.size()]());
    }

    std::span<const std::uint8_t> checked_region(std::uint64_t offset, std::uint64_t size, std::uint32_t crc, std::atomic<std::uint8_t>& verified,
                                                 std::uint8_t bit, const char* what, std::size_t index) const {
        const std::span<const std::uint8_t> bytes = m_bytes.subspan(std::size_t(offset), std::size_t(size));
        if ((verified.load(std::memory_order_acquire) & bit) == 0) {
            const std::uint32_t actual = crc32c(bytes);
            if (enforce_checksums && actual != crc) {
                const std::string owner = std::string_view(what) == "codec" ? "codec " + std::to_string(index) : "tensor '" + m_entries[index].name + "'";
                fail(errc::corrupt, m_context, ": ", owner, ": ", what, " bytes [", offset, ", ", offset + size, ") fail their CRC-32C (stored ", crc, ", computed ",
                     actual, ")");
            }
            verified.fetch_or(bit, std::memory_order_acq_rel);
        }
        return bytes;
    }

    // Regions must follow the canonical layout, which also keeps them inside the file, in order.
    std::uint64_t expect_region(ByteReader& in, std::uint64_t& cursor, std::uint64_t offset, std::uint64_t size, const std::string& what) const {
        const std::uint64_t expected = detail::align_region(cursor);
        if (offset != expected) fail(errc::corrupt, m_context, ": ", what, " at offset ", offset, ", expected ", expected, " (directory byte ", in.offset(), ")");
        if (size > m_bytes.size() - offset) fail(errc::truncated, m_context, ": ", what, " of ", size, " bytes at offset ", offset, " runs past the end of the file");
        cursor = offset + size;
        return offset;
    }

    void parse() {
        namespace format = container_format;
        const std::uint64_t file_size = m_bytes.size();
        if (file_size < format::header_bytes) fail(errc::truncated, m_context, ": ", file_size, " bytes, shorter than the ", format::header_bytes, "-byte header");
        if (std::memcmp(m_bytes.data(), format::magic, sizeof format::magic) != 0) fail(errc::corrupt, m_context, ": not an nwc container (bad magic at offset 0)");
        ByteReader header(m_bytes.first(format::header_bytes), m_context + " header");
        header.skip(sizeof format::magic);
        const std::uint32_t version = header.get_u32();
        const std::uint32_t flags = header.get_u32();
        const std::uint64_t stated_size = header.get_u64();
        const std::uint64_t directory_size = header.get_u64();
        const std::uint32_t directory_crc = header.get_u32();
        const std::uint32_t header_crc = header.get_u32();
        if (enforce_checksums && crc32c(m_bytes.first(format::header_checksum_offset)) != header_crc)
            fail(errc::corrupt, m_context, ": header CRC-32C mismatch (bytes 0-", format::header_checksum_offset - 1, ")");
        if (version != format::version) fail(errc::unsupported, m_context, ": container version ", version, " (this build reads version ", format::version, ")");
        if (flags != 0) fail(errc::unsupported, m_context, ": unknown header flags ", flags, " at offset 12");
        if (stated_size > file_size) fail(errc::truncated, m_context, ": header says ", stated_size, " bytes but the file has ", file_size);
        if (stated_size < file_size) fail(errc::corrupt, m_context, ": ", file_size - stated_size, " trailing bytes after offset ", stated_size);
        if (directory_size > format::max_directory_bytes) fail(errc::limit, m_context, ": directory of ", directory_size, " bytes exceeds ", format::max_directory_bytes);
        if (directory_size > file_size - format::header_bytes)
            fail(errc::corrupt, m_context, ": directory of ", directory_size, " bytes does not fit in a file of ", file_size);
        m_directory_end = format::header_bytes + directory_size;
        const auto listing = m_bytes.subspan(format::header_bytes, std::size_t(directory_size));
        if (enforce_checksums && crc32c(listing) != directory_crc) fail(errc::corrupt, m_context, ": directory CRC-32C mismatch (bytes ", format::header_bytes, "-", m_directory_end - 1, ")");

        // Offsets in messages are file offsets: the reader spans the file up to the directory's end.
        ByteReader in(m_bytes.first(std::size_t(m_directory_end)), m_context + " directory");
        in.skip(format::header_bytes);
        const std::uint32_t codec_count = in.get_count(format::codec_record_bytes, format::max_codecs, "codec");
        const std::uint32_t tensor_count = in.get_count(format::min_tensor_record_bytes, format::max_tensors, "tensor");
        m_file_metadata = in.get_string(format::max_file_metadata_bytes);
        std::uint64_t cursor = m_directory_end;
        m_codecs.resize(codec_count);
        for (std::uint32_t index = 0; index < codec_count; ++index) {
            ContainerCodecEntry& record = m_codecs[index];
            const std::uint64_t offset = in.get_u64();
            record.size = in.get_u64();
            record.crc = in.get_u32();
            record.offset = expect_region(in, cursor, offset, record.size, "codec " + std::to_string(index));
        }
        m_entries.reserve(tensor_count);
        for (std::uint32_t index = 0; index < tensor_count; ++index) m_entries.push_back(parse_entry(in, index, codec_count, cursor));
        in.expect_end();
        if (cursor != file_size) fail(errc::corrupt, m_context, ": regions end at offset ", cursor, " but the file has ", file_size, " bytes");

        m_by_name.resize(m_entries.size());
        for (std::size_t index = 0; index < m_by_name.size(); ++index) m_by_name[index] = index;
        std::sort(m_by_name.begin(), m_by_name.end(), [&](std::size_t a, std::size_t b) { return m_entries[a].name < m_entries[b].name; });
        for (std::size_t k = 1; k < m_by_name.size(); ++k)
            if (m_entries[m_by_name[k]].name == m_entries[m_by_name[k - 1]].name)
                fail(errc::corrupt, m_context, ": tensor name '", m_entries[m_by_name[k]].name, "' appears twice");
    }

    ContainerEntry parse_entry(ByteReader& in, std::uint32_t index, std::uint32_t codec_count, std::uint64_t& cursor) const {
        namespace format = container_format;
        ContainerEntry record;
        const std::size_t name_at = in.offset();
        const std::uint16_t name_size = in.get_u16();
        const auto name_bytes = in.get_bytes(name_size);
        record.name.assign(reinterpret_cast<const char*>(name_bytes.data()), name_bytes.size());
        if (!detail::is_valid_tensor_name(record.name))
            fail(errc::corrupt, m_context, ": tensor #", index, " has an invalid name (empty, too long, not UTF-8 or control characters) at offset ", name_at);
        const std::string context = m_context + ": tensor '" + record.name + "'";
        record.original_dtype = dtype_from_code(in.get_u8(), context);
        const std::uint8_t rank = in.get_u8();
        if (rank > Shape::max_rank) fail(errc::unsupported, context, ": rank ", unsigned(rank), " exceeds ", Shape::max_rank);
        std::int64_t dims[Shape::max_rank] = {};
        for (std::uint8_t axis = 0; axis < rank; ++axis) {
            dims[axis] = in.get_i64();
            if (dims[axis] < 0) fail(errc::corrupt, context, ": dimension ", unsigned(axis), " is negative (", dims[axis], ") at offset ", in.offset() - 8);
        }
        const std::uint64_t raw_bytes = checked_tensor_bytes(record.original_dtype, {dims, rank}, context);
        if (raw_bytes / dtype_size(record.original_dtype) > std::uint64_t(format::max_elements))
            fail(errc::limit, context, ": more than ", format::max_elements, " elements");
        record.shape = Shape(std::span<const std::int64_t>(dims, rank));
        const std::uint8_t method_size = in.get_u8();
        const auto method_bytes = in.get_bytes(method_size);
        record.method.assign(reinterpret_cast<const char*>(method_bytes.data()), method_bytes.size());
        if (!detail::is_valid_method(record.method)) fail(errc::corrupt, context, ": invalid method name at offset ", in.offset() - method_size);
        record.codec_index = in.get_i32();
        if (record.codec_index < -1 || record.codec_index >= std::int32_t(codec_count))
            fail(errc::corrupt, context, ": codec index ", record.codec_index, " but the file has ", codec_count, " codecs (offset ", in.offset() - 4, ")");
        const std::uint64_t metadata_offset = in.get_u64();
        record.metadata_size = in.get_u64();
        record.metadata_crc = in.get_u32();
        record.metadata_offset = expect_region(in, cursor, metadata_offset, record.metadata_size, context + ": metadata");
        const std::uint64_t payload_offset = in.get_u64();
        record.payload_size = in.get_u64();
        record.payload_crc = in.get_u32();
        record.payload_offset = expect_region(in, cursor, payload_offset, record.payload_size, context + ": payload");
        if (record.method == "raw") {
            if (record.codec_index != -1) fail(errc::corrupt, context, ": a raw tensor refers to codec ", record.codec_index);
            if (record.payload_size != raw_bytes) fail(errc::corrupt, context, ": raw payload of ", record.payload_size, " bytes, its shape needs ", raw_bytes);
        }
        const std::uint32_t segment_count = in.get_count(format::segment_record_bytes, format::max_segments, "segment");
        if (segment_count == 0) fail(errc::corrupt, context, ": payload has no segment (offset ", in.offset() - 4, ")");
        record.segment_bounds.resize(std::size_t(segment_count) + 1);
        for (std::uint32_t k = 0; k < segment_count; ++k) {
            const std::uint64_t size = in.get_u64();
            if (size > record.payload_size - record.segment_bounds[k])
                fail(errc::corrupt, context, ": segment ", k, " of ", size, " bytes runs past the payload of ", record.payload_size, " (offset ", in.offset() - 8, ")");
            record.segment_bounds[k + 1] = record.segment_bounds[k] + size;
        }
        if (record.segment_bounds.back() != record.payload_size)
            fail(errc::corrupt, context, ": segments cover ", record.segment_bounds.back(), " of ", record.payload_size, " payload bytes");
        return record;
    }

    std::shared_ptr<const void> m_owner;  // the mapping or the vector, when the reader owns its bytes
    std::span<const std::uint8_t> m_bytes;
    std::string m_context;
    std::string m_file_metadata;
    std::uint64_t m_directory_end = 0;
    std::vector<ContainerCodecEntry> m_codecs;
    std::vector<ContainerEntry> m_entries;
    std::vector<std::size_t> m_by_name;
    std::shared_ptr<std::atomic<std::uint8_t>[]> m_tensor_verified;  // bit 1: metadata, bit 2: payload
    std::shared_ptr<std::atomic<std::uint8_t>[]> m_codec_verified;
};

}  // namespace nwc
