// A codec blob that names a decoder instead of holding it: a .nwc file coded with a codec that
// ships with the library (codecs/*.nwcc) refers to its decoder half by SHA-256 (36 bytes instead of
// 9-20 KB: 0.3-0.6 bits per weight of a 260K-weight model), and a reader finds the decoder among
// the codec files it knows.
//
// Read me first:
// - Blob layout (docs/format/codec.md): u32 "NWCR", 32 bytes SHA-256 of the decoder half
//   (serialize_codec_decoder) the encoder used. A decoder blob starts with "NWCD" instead, so the
//   two are told apart by their first four bytes.
// - Where a reader looks (codec_search_path): the folders of $NWC_CODEC_PATH (':'-separated), then
//   the folder the build configured as NWC_CODEC_DIR (the repository's codecs/), then its retired/
//   subfolder (codecs an earlier release shipped, kept so that its files still decode; nothing
//   compresses with them), every *.nwcc file in each. Nothing found: errc::unsupported naming the
//   hash and the folders searched, and how to make a self-contained file (nwc compress
//   --embed-codec).
// - The SHA-256 is checked on the candidate's decoder bytes, so a codec file edited or retrained
//   under the same name is never taken for the one the file was coded with.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/sha256.hpp"
#include "nwc/core/error.hpp"

namespace nwc {

inline constexpr std::uint32_t codec_reference_magic = 0x5243574E;  // "NWCR"
inline constexpr std::size_t codec_reference_bytes = 4 + 32;

/// The SHA-256 of a decoder half, as 32 bytes.
inline std::array<std::uint8_t, 32> decoder_digest(std::span<const std::uint8_t> decoder_bytes) {
    const std::string hex = detail::sha256_hex(decoder_bytes);
    std::array<std::uint8_t, 32> digest{};
    for (std::size_t i = 0; i < 32; ++i) digest[i] = std::uint8_t(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    return digest;
}

/// The reference blob of a decoder half.
inline std::vector<std::uint8_t> codec_reference_blob(std::span<const std::uint8_t> decoder_bytes) {
    ByteWriter writer;
    writer.put_u32(codec_reference_magic);
    const auto digest = decoder_digest(decoder_bytes);
    writer.put_bytes(digest);
    return writer.take();
}

/// Whether a codec blob is a reference (else it should be a decoder half).
inline bool is_codec_reference(std::span<const std::uint8_t> blob) noexcept {
    std::uint32_t magic = 0;
    if (blob.size() >= 4) std::memcpy(&magic, blob.data(), 4);
    return magic == codec_reference_magic;
}

/// The folders a reader searches for referenced codecs (see the header comment).
inline std::vector<std::filesystem::path> codec_search_path() {
    std::vector<std::filesystem::path> folders;
    if (const char* path = std::getenv("NWC_CODEC_PATH"); path != nullptr) {
        std::string_view rest(path);
        while (!rest.empty()) {
            const std::size_t colon = rest.find(':');
            if (colon != 0) folders.emplace_back(std::string(rest.substr(0, colon)));
            if (colon == std::string_view::npos) break;
            rest.remove_prefix(colon + 1);
        }
    }
#ifdef NWC_CODEC_DIR
    folders.emplace_back(NWC_CODEC_DIR);
    folders.emplace_back(std::filesystem::path(NWC_CODEC_DIR) / "retired");
#endif
    return folders;
}

namespace detail {

/// Decoder halves of the codec files of the search path, by their SHA-256 (hex), read once per
/// process and folder listing.
class CodecLibrary {
public:
    static CodecLibrary& instance() {
        static CodecLibrary library;
        return library;
    }
    /// The decoder half with SHA-256 `hex` among `folders`' *.nwcc files, if any.
    std::optional<std::vector<std::uint8_t>> find(const std::string& hex, const std::vector<std::filesystem::path>& folders) {
        std::lock_guard lock(m_mutex);
        for (const auto& folder : folders) {
            std::error_code ignored;
            for (const auto& entry : std::filesystem::directory_iterator(folder, ignored)) {
                if (entry.path().extension() != ".nwcc") continue;
                const std::string key = entry.path().string();
                if (!m_digests.contains(key)) {
                    try {
                        std::vector<std::uint8_t> decoder = serialize_codec_decoder(read_codec_file(entry.path()).decoder());
                        m_digests[key] = sha256_hex(decoder);
                        m_decoders[m_digests[key]] = std::move(decoder);
                    } catch (const error&) {
                        m_digests[key] = "";  // not a codec file this build reads: never a match
                    }
                }
                if (m_digests[key] == hex) return m_decoders[hex];
            }
        }
        return std::nullopt;
    }

private:
    std::mutex m_mutex;
    std::map<std::string, std::string> m_digests;                  // file -> SHA-256 hex of its decoder half
    std::map<std::string, std::vector<std::uint8_t>> m_decoders;   // SHA-256 hex -> decoder half
};

}  // namespace detail

/// The decoder a codec blob stands for: the blob itself (a decoder half), or the codec file of the
/// search path that a reference names. errc::unsupported when a reference cannot be resolved.
inline NeuralDecoder resolve_codec_blob(std::span<const std::uint8_t> blob, const std::string& context) {
    if (!is_codec_reference(blob)) return parse_codec_decoder(blob, context);
    require(blob.size() == codec_reference_bytes, errc::corrupt, context, ": a codec reference of ", blob.size(), " bytes (", codec_reference_bytes,
            " expected)");
    std::string hex;
    static constexpr char digits[] = "0123456789abcdef";
    for (std::size_t i = 4; i < codec_reference_bytes; ++i) hex += {digits[blob[i] >> 4], digits[blob[i] & 15]};
    const std::vector<std::filesystem::path> folders = codec_search_path();
    const auto decoder = detail::CodecLibrary::instance().find(hex, folders);
    if (!decoder) {
        std::string searched;
        for (const auto& folder : folders) searched += (searched.empty() ? "" : ", ") + folder.string();
        fail(errc::unsupported, context, ": the file was coded with the shipped codec whose decoder has SHA-256 ", hex,
             ", which is not among the codec files of ", searched.empty() ? std::string("(no folder: set NWC_CODEC_PATH)") : searched,
             " (set NWC_CODEC_PATH to the folder that holds it, or compress with --embed-codec for a self-contained file)");
    }
    return parse_codec_decoder(*decoder, context);
}

/// Whether the codec files of the search path hold `decoder_bytes` (so a reference to it resolves).
inline bool codec_is_shipped(std::span<const std::uint8_t> decoder_bytes) {
    return detail::CodecLibrary::instance().find(detail::sha256_hex(decoder_bytes), codec_search_path()).has_value();
}

}  // namespace nwc
