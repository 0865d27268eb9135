// nwc::CdfTableSet: the CdfTables of the M channels a rANS stream is coded with.
//
// Symbol i of a stream uses table i % channel_count() (the codec lays latents out [chunk][channel]).
// All tables of a set share one precision, so the decoders can index one concatenated slot table
// with (channel << precision) | slot. The set builds its coders' lookup tables (derived data: never
// stored, rebuilt identically from the integer frequencies on load): the per-bin ones on
// construction, the slot tables (2^precision entries per channel, most of the memory: 12 MB for a
// codec of 4 prior groups of 16 channels at precision 16) on the first decode_tables() call, since
// an encoder never needs them and a decoder may use one prior group of several. On construction
// it also takes a CRC-32C fingerprint of its serialization, which every rANS stream records so
// that decoding with the wrong tables is an error rather than garbage.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/cdf_table.hpp"

namespace nwc {

namespace detail {
/// How the SIMD decoder finds a slot's bin, frequency and cumulative frequency (measured on Zen 5,
/// docs/bench/range_coder.md; gathers cost ~1 cycle per element there, so fewer elements win while
/// the tables stay in L2):
enum class RansSlotLayout {
    packed,     ///< one u32 per slot: bin | (slot - cumulative) << bin_bits | frequency << (bin_bits + frequency_bits)
    byte_bins,  ///< a u8 bin per slot, then the bin's (frequency << 16 | cumulative): two gathers
    word_bins,  ///< the same with u16 bins (tables of more than 256 bins)
};

/// The lookup tables the rANS coders index, all channels concatenated; slot tables are indexed
/// (channel << precision) | slot. The encoder uses the per-bin tables (bin_entries, bin_bases,
/// offsets, supports); the scalar decoder adds slot_bins, the SIMD decoder its layout's slot table.
struct RansDecodeTables {
    int precision = 0;
    std::uint32_t channel_count = 0;
    RansSlotLayout layout = RansSlotLayout::word_bins;
    /// Bin of each slot; two u16 of padding at the end so a 32-bit gather of the last entry stays
    /// inside the allocation.
    std::vector<std::uint16_t> slot_bins;
    /// The same as u8 (three bytes of padding), for layout byte_bins only.
    std::vector<std::uint8_t> slot_bins_u8;
    /// The packed entries, for layout packed only.
    std::vector<std::uint32_t> slot_packed;
    int packed_bin_bits = 0;
    int packed_frequency_bits = 0;
    /// Per bin of every channel, (frequency << 16) | cumulative; channel c starts at bin_bases[c].
    std::vector<std::uint32_t> bin_entries;
    std::vector<std::uint32_t> bin_bases;
    /// Per channel: the value of bin 0 (a value is offset + bin) and the support (= escape bin).
    std::vector<std::int32_t> offsets;
    std::vector<std::uint32_t> supports;
};
}  // namespace detail

/// The tables of all channels of a stream, in channel order.
class CdfTableSet {
public:
    static constexpr std::uint32_t magic = 0x4644434E;  // "NCDF" little-endian
    static constexpr std::uint16_t version = 1;
    static constexpr std::uint32_t max_channels = 4096;
    /// Most slots over all channels (channels << precision): bounds the decoder tables to 48 MiB.
    static constexpr std::uint64_t max_total_slots = std::uint64_t(1) << 24;

    CdfTableSet() = default;
    ~CdfTableSet() = default;

    /// Takes the channels' tables; all must share one precision. Throws nwc::error(invalid_argument)
    /// when they do not, when there are none, or when the limits above are exceeded.
    explicit CdfTableSet(std::vector<CdfTable> tables) : m_tables(std::move(tables)) {
        require(!m_tables.empty(), errc::invalid_argument, "CdfTableSet: no tables");
        require(m_tables.size() <= max_channels, errc::invalid_argument, "CdfTableSet: ", m_tables.size(), " channels exceed the limit of ",
                max_channels);
        const int precision = m_tables.front().precision();
        for (std::size_t channel = 0; channel < m_tables.size(); ++channel)
            require(m_tables[channel].precision() == precision, errc::invalid_argument, "CdfTableSet: channel ", channel, " has precision ",
                    m_tables[channel].precision(), " but channel 0 has ", precision);
        require((std::uint64_t(m_tables.size()) << precision) <= max_total_slots, errc::invalid_argument, "CdfTableSet: ", m_tables.size(),
                " channels at precision ", precision, " exceed ", max_total_slots, " decoder slots");
        build_decode_tables();
        // The CRC write() stores: a CRC over bytes that end with their own CRC would be the same
        // constant (the CRC residue) for every set.
        ByteWriter writer;
        write(writer);
        m_checksum = crc32c(std::span<const std::uint8_t>(writer.bytes()).first(writer.size() - 4));
    }

    std::size_t channel_count() const noexcept { return m_tables.size(); }
    int precision() const noexcept { return m_tables.empty() ? 0 : m_tables.front().precision(); }
    bool empty() const noexcept { return m_tables.empty(); }
    const CdfTable& operator[](std::size_t channel) const noexcept { return m_tables[channel]; }
    std::span<const CdfTable> tables() const noexcept { return m_tables; }
    /// CRC-32C of write()'s bytes before its own CRC (the CRC it stores): identifies the tables a
    /// stream was coded with.
    std::uint32_t checksum() const noexcept { return m_checksum; }

    /// Ideal code length of a stream, symbol i under table i % channel_count(), in bits.
    double ideal_bits(std::span<const std::int32_t> symbols) const noexcept {
        double bits = 0.0;
        for (std::size_t i = 0; i < symbols.size(); ++i) bits += m_tables[i % m_tables.size()].ideal_bits(symbols[i]);
        return bits;
    }

    /// Layout: u32 magic "NCDF", u16 version, u8 precision, u8 zero, u32 channel count, u32 byte
    /// size of the tables that follow, the tables (CdfTable::write), u32 CRC-32C of all the bytes
    /// before it (magic included).
    void write(ByteWriter& writer) const {
        ByteWriter body;
        for (const CdfTable& table : m_tables) table.write(body);
        ByteWriter head;
        head.put_u32(magic);
        head.put_u16(version);
        head.put_u8(std::uint8_t(precision()));
        head.put_u8(0);
        head.put_u32(std::uint32_t(m_tables.size()));
        head.put_u32(std::uint32_t(body.size()));
        const std::uint32_t crc = crc32c(body.bytes(), crc32c(head.bytes()));
        writer.put_bytes(head.bytes());
        writer.put_bytes(body.bytes());
        writer.put_u32(crc);
    }

    /// Reads what write() wrote. Throws nwc::error: truncated (short input), corrupt (bad magic,
    /// checksum, frequencies), unsupported (version), limit (counts beyond the limits above).
    static CdfTableSet read(ByteReader& reader) {
        const std::size_t start = reader.offset();
        const std::uint32_t found_magic = reader.get_u32();
        require(found_magic == magic, errc::corrupt, reader.context(), ": CDF table set at offset ", start, " has magic 0x", std::hex,
                found_magic, ", expected 0x", magic);
        const std::uint16_t found_version = reader.get_u16();
        require(found_version == version, errc::unsupported, reader.context(), ": CDF table set version ", found_version,
                " (this build reads version ", version, ")");
        const int table_precision = reader.get_u8();
        require(table_precision >= CdfTable::min_precision && table_precision <= CdfTable::max_precision, errc::corrupt, reader.context(),
                ": CDF table set precision ", table_precision, " outside [", CdfTable::min_precision, ", ", CdfTable::max_precision, "]");
        require(reader.get_u8() == 0, errc::corrupt, reader.context(), ": CDF table set reserved byte is not 0");
        const std::uint32_t channels = reader.get_u32();
        require(channels >= 1 && channels <= max_channels, errc::limit, reader.context(), ": CDF table set channel count ", channels,
                " outside [1, ", max_channels, "]");
        require((std::uint64_t(channels) << table_precision) <= max_total_slots, errc::limit, reader.context(), ": ", channels,
                " channels at precision ", table_precision, " exceed ", max_total_slots, " decoder slots");
        const std::uint32_t body_size = reader.get_u32();
        const std::size_t head_end = reader.offset();
        const std::span<const std::uint8_t> body = reader.get_bytes(body_size);
        const std::uint32_t stored_crc = reader.get_u32();
        // The header bytes are re-serialized to checksum them: ByteReader exposes only what it reads.
        ByteWriter head;
        head.put_u32(magic);
        head.put_u16(version);
        head.put_u8(std::uint8_t(table_precision));
        head.put_u8(0);
        head.put_u32(channels);
        head.put_u32(body_size);
        const std::uint32_t actual_crc = crc32c(body, crc32c(head.bytes()));
        require(!enforce_checksums || actual_crc == stored_crc, errc::corrupt, reader.context(), ": CDF table set at offset ", start, " fails its CRC-32C (stored 0x",
                std::hex, stored_crc, ", computed 0x", actual_crc, ")");
        ByteReader body_reader(body, std::string(reader.context()) + " CDF tables");
        std::vector<CdfTable> tables;
        tables.reserve(channels);
        for (std::uint32_t channel = 0; channel < channels; ++channel) tables.push_back(CdfTable::read(body_reader, table_precision));
        if (!body_reader.at_end())
            fail(errc::corrupt, reader.context(), ": CDF table set body at offset ", head_end, " has ", body_reader.remaining(), " trailing bytes");
        return CdfTableSet(std::move(tables));
    }

    /// The decoders' lookup tables (see detail::RansDecodeTables), the slot tables built on the
    /// first call (thread-safe; copies of a set share them).
    const detail::RansDecodeTables& decode_tables() const {
        if (m_tables.empty()) return m_decode;
        std::call_once(m_slots->built, [this] {
            m_slots->tables = m_decode;
            build_slot_tables(m_slots->tables);
        });
        return m_slots->tables;
    }
    /// The same without the slot tables (empty): all an encoder indexes.
    const detail::RansDecodeTables& encode_tables() const noexcept { return m_decode; }

    CdfTableSet(const CdfTableSet&) = default;
    CdfTableSet& operator=(const CdfTableSet&) = default;
    /// Moves share the slot-table holder instead of taking it, so that no set (a moved-from one
    /// included) is ever without one: decode_tables() never meets a null holder.
    CdfTableSet(CdfTableSet&& other) noexcept
        : m_tables(std::move(other.m_tables)), m_decode(std::move(other.m_decode)), m_checksum(other.m_checksum), m_slots(other.m_slots) {}
    CdfTableSet& operator=(CdfTableSet&& other) noexcept {
        m_tables = std::move(other.m_tables);
        m_decode = std::move(other.m_decode);
        m_checksum = other.m_checksum;
        m_slots = other.m_slots;
        return *this;
    }

    friend bool operator==(const CdfTableSet& a, const CdfTableSet& b) noexcept { return a.m_tables == b.m_tables; }

private:
    /// The per-bin tables and the slot layout (see detail::RansDecodeTables; no slot tables).
    void build_decode_tables() {
        const int table_precision = precision();
        std::uint32_t most_bins = 0, largest_frequency = 0;
        for (const CdfTable& table : m_tables) {
            most_bins = std::max(most_bins, table.bin_count());
            for (std::uint32_t frequency : table.frequencies()) largest_frequency = std::max(largest_frequency, frequency);
        }
        // Packed entries when they fit 32 bits and their table stays within half of a 1 MiB L2;
        // else one byte per slot when possible: the smaller table beats the saved gather.
        const int bin_bits = int(std::bit_width(most_bins - 1)), frequency_bits = int(std::bit_width(largest_frequency));
        const bool packable = 2 * frequency_bits + bin_bits <= 32;
        const std::size_t total_slots = m_tables.size() << table_precision;
        if (packable && total_slots * 4 <= (std::size_t(512) << 10))
            m_decode.layout = detail::RansSlotLayout::packed;
        else if (most_bins <= 256)
            m_decode.layout = detail::RansSlotLayout::byte_bins;
        else
            m_decode.layout = detail::RansSlotLayout::word_bins;
        m_decode.precision = table_precision;
        m_decode.channel_count = std::uint32_t(m_tables.size());
        if (m_decode.layout == detail::RansSlotLayout::packed) {
            m_decode.packed_bin_bits = bin_bits;
            m_decode.packed_frequency_bits = frequency_bits;
        }
        m_decode.bin_entries.clear();
        m_decode.bin_bases.resize(m_tables.size());
        m_decode.offsets.resize(m_tables.size());
        m_decode.supports.resize(m_tables.size());
        for (std::size_t channel = 0; channel < m_tables.size(); ++channel) {
            const CdfTable& table = m_tables[channel];
            const auto frequencies = table.frequencies();
            const auto cumulative = table.cumulative();
            m_decode.offsets[channel] = table.offset();
            m_decode.supports[channel] = table.support();
            m_decode.bin_bases[channel] = std::uint32_t(m_decode.bin_entries.size());
            for (std::uint32_t bin = 0; bin < table.bin_count(); ++bin) m_decode.bin_entries.push_back((frequencies[bin] << 16) | cumulative[bin]);
        }
    }

    /// The slot tables of `decode`'s layout: the bin of every slot of every channel.
    void build_slot_tables(detail::RansDecodeTables& decode) const {
        const std::size_t slots = std::size_t(1) << decode.precision, total_slots = m_tables.size() * slots;
        const int bin_bits = decode.packed_bin_bits, frequency_bits = decode.packed_frequency_bits;
        decode.slot_bins.assign(total_slots + 2, 0);
        if (decode.layout == detail::RansSlotLayout::byte_bins) decode.slot_bins_u8.assign(total_slots + 3, 0);
        if (decode.layout == detail::RansSlotLayout::packed) decode.slot_packed.assign(total_slots, 0);
        for (std::size_t channel = 0; channel < m_tables.size(); ++channel) {
            const CdfTable& table = m_tables[channel];
            const auto frequencies = table.frequencies();
            const auto cumulative = table.cumulative();
            for (std::uint32_t bin = 0; bin < table.bin_count(); ++bin)  // the slots of bin b: [cumulative[b], cumulative[b + 1])
                for (std::uint32_t slot = cumulative[bin]; slot < cumulative[bin + 1]; ++slot) {
                    const std::size_t index = channel * slots + slot;
                    decode.slot_bins[index] = std::uint16_t(bin);
                    if (!decode.slot_bins_u8.empty()) decode.slot_bins_u8[index] = std::uint8_t(bin);
                    if (!decode.slot_packed.empty())
                        decode.slot_packed[index] = bin | ((slot - cumulative[bin]) << bin_bits) | (frequencies[bin] << (bin_bits + frequency_bits));
                }
        }
    }

    /// The slot tables, built once, shared by copies (the tables they derive from never change).
    struct SlotTables {
        std::once_flag built;
        detail::RansDecodeTables tables;
    };

    std::vector<CdfTable> m_tables;
    detail::RansDecodeTables m_decode;  ///< without the slot tables
    std::uint32_t m_checksum = 0;
    std::shared_ptr<SlotTables> m_slots = std::make_shared<SlotTables>();
};

}  // namespace nwc
