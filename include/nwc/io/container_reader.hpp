// Reading .nwc containers: memory-mapped, validated structurally on open, checksummed lazily.
//
// Read me first, the file is hostile:
//  - open() checks the magic and the version (version 1 files are refused as errc::unsupported),
//    the footer's end marker and CRC, the directory's size and CRC, and only then parses the
//    directory with a ByteReader: every count is checked against its limit and against the
//    directory bytes that remain before anything is allocated, and every region against the
//    canonical layout (so regions lie between the header and the directory and never overlap).
//  - Names share bytes with an earlier name, so a few bytes can stand for a long name: the total
//    of name bytes has its own limit, as does the total of segments, so what open() allocates is
//    bounded whatever the file.
//  - A tensor's metadata and payload are checked against their CRC-32C on the first access to
//    either, codec blobs on theirs, never on open: reading one tensor never reads another's
//    bytes. verify() checks all of them and the zero padding (`nwc inspect --verify`, tests).
//  - CRCs catch accidents, not attackers: a file with recomputed CRCs must still give clean errors,
//    which is why the parse does not lean on them (the tests mutate files and fix the CRCs up).
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
    /// Tensor `index`'s codec metadata (its metadata and payload are CRC-checked on first access).
    std::span<const std::uint8_t> metadata(std::size_t index) const {
        const ContainerEntry& record = checked_tensor(index);
        return m_bytes.subspan(std::size_t(record.metadata_offset), std::size_t(record.metadata_size));
    }
    /// Tensor `index`'s payload (all segments), CRC-checked with its metadata on first access.
    std::span<const std::uint8_t> payload(std::size_t index) const {
        const ContainerEntry& record = checked_tensor(index);
        return m_bytes.subspan(std::size_t(record.payload_offset), std::size_t(record.payload_size));
    }
    /// Segment `segment` of tensor `index`'s payload (the whole tensor is CRC-checked first).
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
        const std::span<const std::uint8_t> bytes = m_bytes.subspan(std::size_t(record.offset), std::size_t(record.size));
        if (m_codec_verified[index].load(std::memory_order_acquire) == 0) {
            const std::uint32_t actual = crc32c(bytes);
            if (enforce_checksums && actual != record.crc)
                fail(errc::corrupt, m_context, ": codec ", index, ": bytes [", record.offset, ", ", record.offset + record.size, ") fail their CRC-32C (stored ",
                     record.crc, ", computed ", actual, ")");
            m_codec_verified[index].store(1, std::memory_order_release);
        }
        return bytes;
    }
    /// The file-level metadata text (covered by the directory CRC).
    std::string_view file_metadata() const noexcept { return m_file_metadata; }
    /// Size of the container in bytes.
    std::uint64_t total_size() const noexcept { return m_bytes.size(); }
    std::uint32_t version() const noexcept { return container_format::version; }
    const std::string& context() const noexcept { return m_context; }

    /// Every byte of the file by what it is for; `accounting().total() == total_size()`.
    ContainerAccounting accounting() const {
        ContainerAccounting result;
        result.header_footer = container_format::header_bytes + container_format::footer_bytes;
        result.directory = m_bytes.size() - container_format::footer_bytes - m_directory_offset;
        result.file_metadata = m_file_metadata.size();
        for (const ContainerCodecEntry& codec : m_codecs) result.codec_blobs += codec.size;
        result.tensors.reserve(m_entries.size());
        for (std::size_t index = 0; index < m_entries.size(); ++index) {
            const ContainerEntry& entry = m_entries[index];
            const std::uint64_t padding = entry.payload_offset - entry.metadata_offset - entry.metadata_size;
            result.tensors.push_back({m_record_sizes[index], entry.metadata_size, entry.payload_size, padding});
            result.padding += padding;
        }
        return result;
    }

    /// Checks every CRC and that every padding byte is zero.
    void verify() const {
        for (std::size_t index = 0; index < m_codecs.size(); ++index) codec(index);
        for (std::size_t index = 0; index < m_entries.size(); ++index) {
            const ContainerEntry& record = checked_tensor(index);
            for (std::uint64_t at = record.metadata_offset + record.metadata_size; at < record.payload_offset; ++at)
                if (m_bytes[std::size_t(at)] != 0) fail(errc::corrupt, m_context, ": padding byte at offset ", at, " is not zero");
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

    const ContainerEntry& checked_tensor(std::size_t index) const {
        const ContainerEntry& record = entry(index);
        if (m_tensor_verified[index].load(std::memory_order_acquire) == 0) {
            const std::uint32_t actual = crc32c(m_bytes.subspan(std::size_t(record.payload_offset), std::size_t(record.payload_size)),
                                                crc32c(m_bytes.subspan(std::size_t(record.metadata_offset), std::size_t(record.metadata_size))));
            if (enforce_checksums && actual != record.crc)
                fail(errc::corrupt, m_context, ": tensor '", record.name, "': metadata bytes [", record.metadata_offset, ", ",
                     record.metadata_offset + record.metadata_size, ") and payload bytes [", record.payload_offset, ", ", record.payload_offset + record.payload_size,
                     ") fail their CRC-32C (stored ", record.crc, ", computed ", actual, ")");
            m_tensor_verified[index].store(1, std::memory_order_release);
        }
        return record;
    }

    // Places a region of `size` bytes at `offset`; it must end before the directory starts.
    void place(std::uint64_t offset, std::uint64_t size, const std::string& what, std::size_t field_at) {
        if (offset > m_directory_offset || size > m_directory_offset - offset)
            fail(errc::corrupt, m_context, ": ", what, " of ", size, " bytes at offset ", offset, " does not end before the directory starts at offset ",
                 m_directory_offset, " (size at offset ", field_at, ")");
        m_cursor = offset + size;
    }

    void parse() {
        namespace format = container_format;
        const std::uint64_t file_size = m_bytes.size();
        if (file_size < sizeof format::magic) fail(errc::truncated, m_context, ": ", file_size, " bytes, shorter than the magic");
        if (std::memcmp(m_bytes.data(), format::magic, sizeof format::magic) != 0) fail(errc::corrupt, m_context, ": not an nwc container (bad magic at offset 0)");
        if (file_size < format::header_bytes) fail(errc::truncated, m_context, ": ", file_size, " bytes, shorter than the ", format::header_bytes, "-byte header");
        ByteReader header(m_bytes.first(format::header_bytes), m_context + " header");
        header.skip(sizeof format::magic);
        const std::uint32_t version = header.get_u32();
        if (version != format::version)
            fail(errc::unsupported, m_context, ": container version ", version, "; this build reads version ", format::version,
                 version < format::version ? " only (compress the model again to convert an older file)" : "");
        if (const std::uint32_t flags = header.get_u32(); flags != 0) fail(errc::unsupported, m_context, ": unknown header flags ", flags, " at offset 12");
        if (file_size < format::header_bytes + format::footer_bytes)
            fail(errc::truncated, m_context, ": ", file_size, " bytes, shorter than the header and the footer (", format::header_bytes + format::footer_bytes, ")");

        const std::uint64_t footer_at = file_size - format::footer_bytes;
        if (std::memcmp(m_bytes.data() + file_size - sizeof format::end_magic, format::end_magic, sizeof format::end_magic) != 0)
            fail(errc::truncated, m_context, ": the last bytes are not the footer's end marker: the file was cut short (or bytes were appended)");
        ByteReader footer(m_bytes.subspan(std::size_t(footer_at), 12), m_context + " footer");
        const std::uint32_t directory_size = footer.get_u32();
        const std::uint32_t directory_crc = footer.get_u32();
        const std::uint32_t footer_crc = footer.get_u32();
        if (enforce_checksums && crc32c(m_bytes.subspan(std::size_t(footer_at), 8), crc32c(m_bytes.first(format::header_bytes))) != footer_crc)
            fail(errc::corrupt, m_context, ": footer CRC-32C mismatch (header bytes 0-15 and footer bytes ", footer_at, "-", footer_at + 7, ")");
        if (directory_size > format::max_directory_bytes) fail(errc::limit, m_context, ": directory of ", directory_size, " bytes exceeds ", format::max_directory_bytes);
        if (directory_size > footer_at - format::header_bytes)
            fail(errc::corrupt, m_context, ": directory of ", directory_size, " bytes does not fit in a file of ", file_size);
        m_directory_offset = footer_at - directory_size;
        if (enforce_checksums && crc32c(m_bytes.subspan(std::size_t(m_directory_offset), directory_size)) != directory_crc)
            fail(errc::corrupt, m_context, ": directory CRC-32C mismatch (bytes ", m_directory_offset, "-", footer_at - 1, ")");

        // Offsets in messages are file offsets: the reader spans the file up to the directory's end.
        ByteReader in(m_bytes.first(std::size_t(footer_at)), m_context + " directory");
        in.skip(std::size_t(m_directory_offset));
        const std::uint64_t codec_count = get_count(in, format::max_codecs, format::min_codec_record_bytes, "codec");
        const std::uint64_t method_count = get_count(in, format::max_methods, format::min_method_record_bytes, "method");
        const std::uint64_t tensor_count = get_count(in, format::max_tensors, format::min_tensor_record_bytes, "tensor");
        const std::uint64_t metadata_size = detail::get_varint(in, "file metadata size");
        if (metadata_size > format::max_file_metadata_bytes)
            fail(errc::limit, m_context, ": file metadata of ", metadata_size, " bytes exceeds ", format::max_file_metadata_bytes);
        const auto metadata_bytes = in.get_bytes(std::size_t(metadata_size));
        m_file_metadata.assign(reinterpret_cast<const char*>(metadata_bytes.data()), metadata_bytes.size());

        for (std::uint64_t index = 0; index < method_count; ++index) {
            const std::size_t at = in.offset();
            const std::uint64_t size = detail::get_varint(in, "method name size");
            if (size > format::max_method_bytes) fail(errc::corrupt, m_context, ": method ", index, " of ", size, " bytes at offset ", at);
            const auto bytes = in.get_bytes(std::size_t(size));
            std::string method(reinterpret_cast<const char*>(bytes.data()), bytes.size());
            if (!detail::is_valid_method(method)) fail(errc::corrupt, m_context, ": method ", index, " at offset ", at, " is not 1..32 of [a-z0-9_-]");
            if (std::find(m_methods.begin(), m_methods.end(), method) != m_methods.end())
                fail(errc::corrupt, m_context, ": method '", method, "' listed twice (offset ", at, ")");
            m_methods.push_back(std::move(method));
        }
        m_cursor = format::header_bytes;
        m_codecs.resize(std::size_t(codec_count));
        for (ContainerCodecEntry& record : m_codecs) {
            const std::size_t at = in.offset();
            record.size = detail::get_varint(in, "codec size");
            record.crc = in.get_u32();
            record.offset = m_cursor;
            place(record.offset, record.size, "codec " + std::to_string(&record - m_codecs.data()), at);
        }
        m_entries.reserve(std::size_t(tensor_count));
        m_record_sizes.reserve(std::size_t(tensor_count));
        for (std::uint64_t index = 0; index < tensor_count; ++index) {
            const std::size_t at = in.offset();
            m_entries.push_back(parse_entry(in, index));
            m_record_sizes.push_back(in.offset() - at);
        }
        in.expect_end();
        if (m_cursor != m_directory_offset)
            fail(errc::corrupt, m_context, ": regions end at offset ", m_cursor, " but the directory starts at offset ", m_directory_offset);
        if (m_methods_used != m_methods.size()) fail(errc::corrupt, m_context, ": ", m_methods.size() - m_methods_used, " listed methods are never used");

        m_by_name.resize(m_entries.size());
        for (std::size_t index = 0; index < m_by_name.size(); ++index) m_by_name[index] = index;
        std::sort(m_by_name.begin(), m_by_name.end(), [&](std::size_t a, std::size_t b) { return m_entries[a].name < m_entries[b].name; });
        for (std::size_t k = 1; k < m_by_name.size(); ++k)
            if (m_entries[m_by_name[k]].name == m_entries[m_by_name[k - 1]].name)
                fail(errc::corrupt, m_context, ": tensor name '", m_entries[m_by_name[k]].name, "' appears twice");
    }

    // A count, checked against its limit and against the smallest records it announces.
    std::uint64_t get_count(ByteReader& in, std::uint64_t max_count, std::size_t min_record, const char* what) const {
        const std::size_t at = in.offset();
        const std::uint64_t count = detail::get_varint(in, what);
        if (count > max_count) fail(errc::limit, m_context, ": ", what, " count ", count, " at offset ", at, " exceeds ", max_count);
        if (count > in.remaining() / min_record)
            fail(errc::truncated, m_context, ": ", what, " count ", count, " at offset ", at, " needs at least ", count * min_record, " bytes but only ",
                 in.remaining(), " remain in the directory");
        return count;
    }

    ContainerEntry parse_entry(ByteReader& in, std::uint64_t index) {
        namespace format = container_format;
        ContainerEntry record;
        const std::size_t name_at = in.offset();
        static const std::string no_name;
        const std::uint64_t base = detail::get_varint(in, "name base");
        if (base >= std::max<std::uint64_t>(1, std::min<std::uint64_t>(m_entries.size(), detail::name_base_window)))
            fail(errc::corrupt, m_context, ": tensor #", index, " at offset ", name_at, ": its name refers to the name ", base + 1, " back (",
                 std::min<std::uint64_t>(m_entries.size(), detail::name_base_window), " available)");
        const std::string& previous = m_entries.empty() ? no_name : m_entries[m_entries.size() - 1 - std::size_t(base)].name;
        const std::uint64_t prefix = detail::get_varint(in, "name prefix size");
        const std::uint64_t suffix = detail::get_varint(in, "name suffix size");
        const std::uint64_t middle_size = detail::get_varint(in, "name middle size");
        if (prefix > previous.size() || suffix > previous.size() - prefix || middle_size > format::max_name_bytes - prefix - suffix)
            fail(errc::corrupt, m_context, ": tensor #", index, " at offset ", name_at, ": name of ", prefix, " + ", middle_size, " + ", suffix,
                 " bytes (its base has ", previous.size(), ", a name at most ", format::max_name_bytes, ")");
        const auto middle = in.get_bytes(std::size_t(middle_size));
        m_name_bytes += prefix + middle_size + suffix;
        if (m_name_bytes > format::max_total_name_bytes) fail(errc::limit, m_context, ": names take more than ", format::max_total_name_bytes, " bytes");
        record.name.reserve(std::size_t(prefix + middle_size + suffix));
        record.name.assign(previous, 0, std::size_t(prefix));
        record.name.append(reinterpret_cast<const char*>(middle.data()), middle.size());
        record.name.append(previous, previous.size() - std::size_t(suffix), std::size_t(suffix));
        if (detail::name_sharing(previous, record.name) != detail::NameSharing{std::size_t(prefix), std::size_t(suffix)})
            fail(errc::corrupt, m_context, ": tensor #", index, " at offset ", name_at, " does not share all it could with its base name");
        if (!detail::is_valid_tensor_name(record.name))
            fail(errc::corrupt, m_context, ": tensor #", index, " has an invalid name (empty, not UTF-8 or control characters) at offset ", name_at);
        const std::string context = m_context + ": tensor '" + record.name + "'";

        const std::uint8_t type = in.get_u8();
        record.original_dtype = dtype_from_code(type & 0x0Fu, context);
        const unsigned rank = type >> 4;
        if (rank > unsigned(Shape::max_rank)) fail(errc::unsupported, context, ": rank ", rank, " exceeds ", Shape::max_rank, " (offset ", in.offset() - 1, ")");
        std::int64_t dims[Shape::max_rank] = {};
        for (unsigned axis = 0; axis < rank; ++axis) {
            const std::size_t at = in.offset();
            const std::uint64_t dim = detail::get_varint(in, "dimension");
            if (dim > std::uint64_t(INT64_MAX)) fail(errc::corrupt, context, ": dimension ", axis, " of ", dim, " at offset ", at, " does not fit in 63 bits");
            dims[axis] = std::int64_t(dim);
        }
        const std::uint64_t raw_bytes = checked_tensor_bytes(record.original_dtype, {dims, rank}, context);
        if (raw_bytes / dtype_size(record.original_dtype) > std::uint64_t(format::max_elements))
            fail(errc::limit, context, ": more than ", format::max_elements, " elements");
        record.shape = Shape(std::span<const std::int64_t>(dims, rank));

        // Methods are listed in order of first use: a tensor names a known one or the next new one.
        const std::size_t method_at = in.offset();
        const std::uint64_t method = detail::get_varint(in, "method index");
        if (method >= m_methods.size() || method > m_methods_used)
            fail(errc::corrupt, context, ": method index ", method, " at offset ", method_at, " (", m_methods.size(), " methods, ", m_methods_used, " used so far)");
        if (method == m_methods_used) ++m_methods_used;
        record.method = m_methods[std::size_t(method)];
        const std::size_t codec_at = in.offset();
        const std::uint64_t codec = detail::get_varint(in, "codec reference");
        if (codec > m_codecs.size()) fail(errc::corrupt, context, ": codec ", std::int64_t(codec) - 1, " at offset ", codec_at, " but the file has ", m_codecs.size(), " codecs");
        record.codec_index = std::int32_t(codec) - 1;

        const std::size_t metadata_at = in.offset();
        record.metadata_size = detail::get_varint(in, "metadata size");
        const std::size_t payload_at = in.offset();
        record.payload_size = detail::get_varint(in, "payload size");
        record.metadata_offset = m_cursor;
        place(record.metadata_offset, record.metadata_size, context + ": metadata", metadata_at);
        record.payload_offset = detail::container_payload_offset(m_cursor, record.payload_size);
        place(record.payload_offset, record.payload_size, context + ": payload", payload_at);
        if (record.method == "raw") {
            if (record.codec_index != -1) fail(errc::corrupt, context, ": a raw tensor refers to codec ", record.codec_index);
            if (record.payload_size != raw_bytes) fail(errc::corrupt, context, ": raw payload of ", record.payload_size, " bytes, its shape needs ", raw_bytes);
        }

        const std::size_t segments_at = in.offset();
        const std::uint64_t segments = detail::get_varint(in, "segment count");
        if (segments == 0) fail(errc::corrupt, context, ": payload has no segment (offset ", segments_at, ")");
        if (segments > format::max_segments - m_segment_count)
            fail(errc::limit, context, ": more than ", format::max_segments, " segments in the file (offset ", segments_at, ")");
        if (segments - 1 > in.remaining())
            fail(errc::truncated, context, ": ", segments, " segments at offset ", segments_at, " but only ", in.remaining(), " directory bytes remain");
        m_segment_count += segments;
        record.segment_bounds.resize(std::size_t(segments) + 1);
        for (std::size_t k = 0; k + 1 < segments; ++k) {
            const std::size_t at = in.offset();
            const std::uint64_t size = detail::get_varint(in, "segment size");
            if (size > record.payload_size - record.segment_bounds[k])
                fail(errc::corrupt, context, ": segment ", k, " of ", size, " bytes runs past the payload of ", record.payload_size, " (offset ", at, ")");
            record.segment_bounds[k + 1] = record.segment_bounds[k] + size;
        }
        record.segment_bounds.back() = record.payload_size;  // the last segment takes the rest
        record.crc = in.get_u32();
        return record;
    }

    std::shared_ptr<const void> m_owner;  // the mapping or the vector, when the reader owns its bytes
    std::span<const std::uint8_t> m_bytes;
    std::string m_context;
    std::string m_file_metadata;
    std::uint64_t m_directory_offset = 0;
    std::vector<std::string> m_methods;
    std::vector<ContainerCodecEntry> m_codecs;
    std::vector<ContainerEntry> m_entries;
    std::vector<std::uint64_t> m_record_sizes;  // bytes of each tensor's directory record
    std::vector<std::size_t> m_by_name;
    std::shared_ptr<std::atomic<std::uint8_t>[]> m_tensor_verified;
    std::shared_ptr<std::atomic<std::uint8_t>[]> m_codec_verified;
    // Parse state.
    std::uint64_t m_cursor = 0;
    std::uint64_t m_methods_used = 0;
    std::uint64_t m_name_bytes = 0;
    std::uint64_t m_segment_count = 0;
};

}  // namespace nwc
