// The codec file (.nwcc) and the embeddable decoder half. Byte-by-byte layout: docs/format/codec.md.
//
// Read me first:
// - NeuralCodec file: u32 "NWCC", u16 version, u16 flags, provenance JSON (u32 length + bytes), decoder
//   half (u64 size + bytes), encoder weights (u64 size + bytes), the trained prior's parameters
//   (u64 size + f32 values, may be empty), u32 CRC-32C of everything before.
// - Decoder half (what a .nwc file embeds, self-delimiting): u32 "NWCD", u16 version, u8 weight
//   dtype, u8 zero, the architecture (6 x u32: d, W, B, M, L, prior groups G), g_s's weights,
//   G x M float medians, G CdfTableSets (each with its own checksum), u32 CRC-32C of the half.
// - Weights are stored parameter by parameter in ResidualMLP::parameters() order, row-major, as
//   f32, f16 or bf16 (nwc::dtype codes 0, 1, 2). Readers reject non-finite weights and medians.
// - Readers check every size against the bytes that remain before allocating, then the checksum,
//   then the contents; any violation is an nwc::error (truncated, corrupt, unsupported, limit) that
//   names the part and the byte offset. Writers are deterministic: the same NeuralCodec gives the same
//   bytes, and files are replaced atomically (AtomicFileWriter).
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/file_io.hpp"

namespace nwc {

inline constexpr std::uint32_t codec_file_magic = 0x4343574E;     // "NWCC"
inline constexpr std::uint32_t codec_decoder_magic = 0x4443574E;  // "NWCD"
inline constexpr std::uint16_t codec_format_version = 1;
/// Largest provenance string and parameter count a reader accepts.
inline constexpr std::uint32_t codec_max_provenance_bytes = 1 << 20;
inline constexpr std::int64_t codec_max_parameters = std::int64_t(1) << 28;

namespace detail {

inline void write_network_weights(ByteWriter& writer, const ResidualMLP<float>& network, dtype storage) {
    for (const auto* parameter : network.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            const float value = parameter->value.data()[i];
            if (storage == dtype::f32) writer.put_f32(value);
            else if (storage == dtype::f16) writer.put_u16(to_half(value).bits);
            else writer.put_u16(to_bfloat16(value).bits);
        }
}

inline ResidualMLP<float> read_network_weights(ByteReader& reader, const ResidualMLPShape& shape, dtype storage, std::string_view what) {
    const std::size_t start = reader.offset();
    const auto bytes = reader.get_bytes(std::size_t(shape.parameter_count()) * dtype_size(storage));  // checked before allocating
    ResidualMLP<float> network(shape);
    std::size_t at = 0;
    for (auto* parameter : network.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            float value;
            if (storage == dtype::f32) {
                std::memcpy(&value, bytes.data() + at, 4);
                at += 4;
            } else {
                std::uint16_t bits;
                std::memcpy(&bits, bytes.data() + at, 2);
                at += 2;
                value = storage == dtype::f16 ? to_float(half{bits}) : to_float(bfloat16{bits});
            }
            if (!std::isfinite(value))
                fail(errc::corrupt, reader.context(), ": ", what, " weight '", parameter->name, "'[", i, "] at offset ",
                     start + at - dtype_size(storage), " is not finite");
            parameter->value.data()[i] = value;
        }
    return network;
}

inline CodecArchitecture read_architecture(ByteReader& reader) {
    const std::size_t start = reader.offset();
    CodecArchitecture architecture;
    std::uint32_t fields[6];
    for (std::uint32_t& field : fields) field = reader.get_u32();
    for (std::uint32_t field : fields)
        require(field <= 8192, errc::limit, reader.context(), ": architecture at offset ", start, " has a size of ", field, " (limit 8192)");
    architecture = {int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]), fields[5] != 1};
    require(fields[5] == 1 || fields[5] == fields[4], errc::corrupt, reader.context(), ": ", fields[5], " prior groups at offset ", start + 20,
            " (must be 1 or the level count ", fields[4], ")");
    try {
        architecture.validate();
    } catch (const error& e) {
        fail(errc::corrupt, reader.context(), ": architecture at offset ", start, ": ", e.message());
    }
    require(architecture.decoder_shape().parameter_count() <= codec_max_parameters, errc::limit, reader.context(), ": decoder of ",
            architecture.decoder_shape().parameter_count(), " parameters exceeds ", codec_max_parameters);
    return architecture;
}

}  // namespace detail

/// Appends the decoder half (see header comment) to `writer`.
inline void write_codec_decoder(ByteWriter& writer, const NeuralDecoder& decoder) {
    ByteWriter half;
    half.put_u32(codec_decoder_magic);
    half.put_u16(codec_format_version);
    half.put_u8(std::uint8_t(decoder.weight_dtype()));
    half.put_u8(0);
    const CodecArchitecture& a = decoder.architecture();
    for (int field : {a.chunk_size, a.width, a.blocks, a.latents, a.levels, a.prior_groups()}) half.put_u32(std::uint32_t(field));
    detail::write_network_weights(half, decoder.network(), decoder.weight_dtype());
    half.put_array(decoder.all_medians());
    for (const CdfTableSet& tables : decoder.all_tables()) tables.write(half);
    half.put_u32(crc32c(half.bytes()));
    writer.put_bytes(half.bytes());
}

/// The decoder half as bytes, for embedding in .nwc files.
inline std::vector<std::uint8_t> serialize_codec_decoder(const NeuralDecoder& decoder) {
    ByteWriter writer;
    write_codec_decoder(writer, decoder);
    return writer.take();
}

/// Parses a decoder half from the start of `bytes`. With `consumed` null the half must fill `bytes`
/// exactly; otherwise *consumed receives its length (the half is self-delimiting), so a caller can
/// parse it in place inside a larger file. `context` names the source in error messages.
inline NeuralDecoder parse_codec_decoder(std::span<const std::uint8_t> bytes, std::string_view context = "codec decoder",
                                        std::size_t* consumed = nullptr) {
    ByteReader reader(bytes, context);
    const std::uint32_t magic = reader.get_u32();
    require(magic == codec_decoder_magic, errc::corrupt, context, ": codec decoder has magic 0x", std::hex, magic, ", expected 0x",
            codec_decoder_magic, " (\"NWCD\")");
    const std::uint16_t version = reader.get_u16();
    require(version == codec_format_version, errc::unsupported, context, ": codec decoder version ", version, " (this build reads ",
            codec_format_version, ")");
    const std::uint8_t dtype_code = reader.get_u8();
    require(dtype_code <= 2, errc::unsupported, context, ": codec weight dtype code ", int(dtype_code),
            " at offset 6 (0 F32, 1 F16, 2 BF16 are supported)");
    require(reader.get_u8() == 0, errc::corrupt, context, ": reserved byte at offset 7 is not zero");
    const CodecArchitecture architecture = detail::read_architecture(reader);
    const dtype storage = dtype(dtype_code);
    // Sizes first: everything up to the checksum must be present before anything is interpreted.
    ResidualMLP<float> network = detail::read_network_weights(reader, architecture.decoder_shape(), storage, "decoder");
    const std::size_t medians_at = reader.offset();
    const int groups = architecture.prior_groups();
    std::vector<float> medians = reader.get_array<float>(std::uint64_t(groups) * std::uint64_t(architecture.latents));
    std::vector<CdfTableSet> tables;
    for (int group = 0; group < groups; ++group) tables.push_back(CdfTableSet::read(reader));
    const std::size_t crc_at = reader.offset();
    const std::uint32_t stored = reader.get_u32();
    const std::uint32_t computed = crc32c(bytes.subspan(0, crc_at));
    require(!enforce_checksums || stored == computed, errc::corrupt, context, ": codec decoder checksum at offset ", crc_at, " is 0x", std::hex, stored,
            " but the bytes give 0x", computed);
    if (consumed) *consumed = reader.offset();
    else reader.expect_end();
    for (std::size_t c = 0; c < medians.size(); ++c)
        require(std::isfinite(medians[c]), errc::corrupt, context, ": median ", c, " at offset ", medians_at + 4 * c, " is not finite");
    for (std::size_t group = 0; group < tables.size(); ++group)
        require(tables[group].channel_count() == std::size_t(architecture.latents), errc::corrupt, context, ": prior group ", group, " has ",
                tables[group].channel_count(), " CDF tables for ", architecture.latents, " latents");
    return NeuralDecoder(architecture, std::move(network), std::move(medians), std::move(tables), storage);
}

/// The whole codec file as bytes (deterministic).
inline std::vector<std::uint8_t> serialize_codec(const NeuralCodec& codec) {
    ByteWriter writer;
    writer.put_u32(codec_file_magic);
    writer.put_u16(codec_format_version);
    writer.put_u16(1);  // flags: bit 0 = encoder present
    writer.put_string(codec.provenance());
    const std::vector<std::uint8_t> decoder = serialize_codec_decoder(codec.decoder());
    writer.put_u64(decoder.size());
    writer.put_bytes(decoder);
    ByteWriter encoder;
    detail::write_network_weights(encoder, codec.encoder(), codec.weight_dtype());
    writer.put_u64(encoder.size());
    writer.put_bytes(encoder.bytes());
    writer.put_u64(codec.prior_parameters().size() * sizeof(float));
    writer.put_array(codec.prior_parameters());
    writer.put_u32(crc32c(writer.bytes()));
    return writer.take();
}

/// Parses a whole codec file; `context` names it in error messages.
inline NeuralCodec parse_codec(std::span<const std::uint8_t> bytes, std::string_view context = "codec file") {
    ByteReader reader(bytes, context);
    const std::uint32_t magic = reader.get_u32();
    require(magic == codec_file_magic, errc::corrupt, context, ": magic 0x", std::hex, magic, ", expected 0x", codec_file_magic,
            " (\"NWCC\"): not a codec file");
    const std::uint16_t version = reader.get_u16();
    require(version == codec_format_version, errc::unsupported, context, ": version ", version, " (this build reads ", codec_format_version, ")");
    const std::uint16_t flags = reader.get_u16();
    require(flags == 1, errc::unsupported, context, ": flags 0x", std::hex, flags, " at offset 6 (only 0x1, encoder present, is defined)");
    std::string provenance = reader.get_string(codec_max_provenance_bytes);
    const std::size_t decoder_at = reader.offset();
    const std::uint64_t decoder_size = reader.get_u64();
    require(decoder_size <= reader.remaining(), errc::truncated, context, ": decoder half of ", decoder_size, " bytes at offset ", decoder_at,
            " but only ", reader.remaining(), " bytes remain");
    const auto decoder_bytes = reader.get_bytes(std::size_t(decoder_size));
    const std::size_t encoder_at = reader.offset();
    const std::uint64_t encoder_size = reader.get_u64();
    require(encoder_size <= reader.remaining(), errc::truncated, context, ": encoder of ", encoder_size, " bytes at offset ", encoder_at,
            " but only ", reader.remaining(), " bytes remain");
    const auto encoder_bytes = reader.get_bytes(std::size_t(encoder_size));
    const std::size_t prior_at = reader.offset();
    const std::uint64_t prior_size = reader.get_u64();
    require(prior_size <= reader.remaining() && prior_size % 4 == 0, errc::truncated, context, ": prior parameters of ", prior_size,
            " bytes at offset ", prior_at, " but only ", reader.remaining(), " bytes remain");
    std::vector<float> prior_parameters = reader.get_array<float>(prior_size / 4);
    const std::size_t crc_at = reader.offset();
    const std::uint32_t stored = reader.get_u32();
    reader.expect_end();
    const std::uint32_t computed = crc32c(bytes.subspan(0, crc_at));
    require(!enforce_checksums || stored == computed, errc::corrupt, context, ": checksum at offset ", crc_at, " is 0x", std::hex, stored, " but the bytes give 0x",
            computed);
    NeuralDecoder decoder = parse_codec_decoder(decoder_bytes, std::string(context) + " (decoder half)");
    const ResidualMLPShape encoder_shape = decoder.architecture().encoder_shape();
    const std::uint64_t expected = std::uint64_t(encoder_shape.parameter_count()) * dtype_size(decoder.weight_dtype());
    require(encoder_size == expected, errc::corrupt, context, ": encoder section at offset ", encoder_at, " holds ", encoder_size,
            " bytes, the architecture needs ", expected);
    ByteReader encoder_reader(encoder_bytes, std::string(context) + " (encoder)");
    ResidualMLP<float> encoder = detail::read_network_weights(encoder_reader, encoder_shape, decoder.weight_dtype(), "encoder");
    const std::size_t expected_prior = std::size_t(decoder.architecture().prior_groups() * decoder.architecture().latents * detail::prior_parameters_per_channel);
    require(prior_parameters.empty() || prior_parameters.size() == expected_prior, errc::corrupt, context, ": ", prior_parameters.size(),
            " prior parameters at offset ", prior_at + 8, ", the architecture needs 0 or ", expected_prior);
    for (std::size_t i = 0; i < prior_parameters.size(); ++i)
        require(std::isfinite(prior_parameters[i]), errc::corrupt, context, ": prior parameter ", i, " at offset ", prior_at + 8 + 4 * i,
                " is not finite");
    NeuralCodec codec(std::move(encoder), std::move(decoder), std::move(provenance));
    codec.set_prior_parameters(std::move(prior_parameters));
    return codec;
}

/// Writes a codec file atomically.
inline void write_codec_file(const std::filesystem::path& path, const NeuralCodec& codec) { write_file_atomic(path, serialize_codec(codec)); }

/// Reads and validates a codec file.
inline NeuralCodec read_codec_file(const std::filesystem::path& path) {
    const MappedFile file(path);
    return parse_codec(file.bytes(), "codec file '" + path.string() + "'");
}

}  // namespace nwc
