// llama2.c's BPE tokenizer (tokenizer.bin), encoding exactly as run.c's encode() does.
//
// File layout, little-endian: int32 max_token_length, then for every token: float32 score,
// int32 length, `length` bytes. The token count is not stored: it is the model's vocab_size, so
// the reader takes it as an argument (or reads tokens until the file ends).
//
// Read me first -- what "exactly as llama2.c" means, trap by trap:
//  * optional BOS (id 1), then the dummy-prefix token " " (only for non-empty text);
//  * the text is cut into UTF-8 code points by llama2.c's byte rule (a non-continuation byte starts
//    a code point; at most 4 bytes are gathered); a code point found in the vocabulary becomes its
//    token, otherwise each of its bytes becomes token byte + 3 (the <0xXX> tokens);
//  * then, repeatedly, the adjacent pair whose concatenation is a token with the highest score is
//    merged, the leftmost pair winning ties; pairs whose score is <= -1e10 never merge. BOS takes
//    part in the merging like any other token, as it does in run.c.
// run.c rescans all pairs after every merge (O(n^2)); here a heap of candidate pairs ordered by
// (score, then leftmost position) gives the same merges in O(n log n), so a 250 KB text is
// tokenized in one call, as the perplexity protocol requires. Where run.c stops at a NUL byte, this
// encoder treats NUL as an ordinary byte (it falls back to <0x00>).
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"

namespace nwc::llm {

/// A llama2.c tokenizer: pieces, their merge scores and a hash index from piece to id.
class Tokenizer {
public:
    static constexpr int bos_id = 1;                      ///< "<s>"
    static constexpr int eos_id = 2;                      ///< "</s>"
    static constexpr int byte_fallback_offset = 3;        ///< token of raw byte b is b + 3
    static constexpr std::int32_t max_token_length_limit = 1 << 16;
    static constexpr std::int64_t max_vocab_size = 1 << 24;

    /// Parses tokenizer.bin bytes holding exactly `vocab_size` tokens (the model's vocabulary).
    /// Pass vocab_size = -1 to read tokens until the data ends. Throws nwc::error naming `context`:
    /// truncated for short data, corrupt for negative lengths, a token longer than
    /// max_token_length, a non-finite score, a NUL inside a piece, duplicate pieces, trailing bytes
    /// or a vocabulary too small for byte fallback (fewer than 259 tokens).
    static Tokenizer parse(std::span<const std::uint8_t> bytes, std::int64_t vocab_size, std::string_view context = "tokenizer") {
        require(vocab_size == -1 || (vocab_size > 0 && vocab_size <= max_vocab_size), errc::invalid_argument, context, ": vocab_size ",
                vocab_size, " out of range");
        ByteReader reader(bytes, context);
        Tokenizer tokenizer;
        const std::int32_t max_length = reader.get_i32();
        require(max_length > 0, errc::corrupt, context, ": max_token_length is ", max_length);
        require(max_length <= max_token_length_limit, errc::limit, context, ": max_token_length ", max_length, " exceeds ", max_token_length_limit);
        tokenizer.m_max_token_length = max_length;
        // Each token takes at least 8 bytes, which bounds the reservation by the data's size.
        const std::int64_t capacity = vocab_size == -1 ? std::int64_t(reader.remaining() / 8) : vocab_size;
        require(vocab_size == -1 || std::uint64_t(vocab_size) <= reader.remaining() / 8, errc::truncated, context, ": ", vocab_size,
                " tokens need at least ", vocab_size * 8, " bytes but only ", reader.remaining(), " remain after the header");
        tokenizer.m_pieces.reserve(std::size_t(capacity));
        tokenizer.m_scores.reserve(std::size_t(capacity));
        while (vocab_size == -1 ? !reader.at_end() : std::int64_t(tokenizer.m_pieces.size()) < vocab_size) {
            const std::size_t offset = reader.offset();
            const std::int64_t id = std::int64_t(tokenizer.m_pieces.size());
            require(id < max_vocab_size, errc::limit, context, ": more than ", max_vocab_size, " tokens");
            const float score = reader.get_f32();
            const std::int32_t length = reader.get_i32();
            require(std::isfinite(score), errc::corrupt, context, ": token ", id, " at offset ", offset, " has a non-finite score");
            require(length >= 0 && length <= max_length, errc::corrupt, context, ": token ", id, " at offset ", offset, " has length ", length,
                    " (max_token_length is ", max_length, ")");
            const auto piece = reader.get_bytes(std::size_t(length));
            std::string text(reinterpret_cast<const char*>(piece.data()), piece.size());
            require(text.find('\0') == std::string::npos, errc::corrupt, context, ": token ", id, " at offset ", offset, " contains a NUL byte");
            tokenizer.m_pieces.push_back(std::move(text));
            tokenizer.m_scores.push_back(score);
        }
        reader.expect_end();
        const std::size_t count = tokenizer.m_pieces.size();
        require(count >= 256 + byte_fallback_offset, errc::corrupt, context, ": ", count, " tokens cannot hold the 256 byte-fallback tokens");
        tokenizer.m_index.reserve(count);
        for (std::size_t id = 0; id < count; ++id) {
            // run.c's bsearch over a sorted copy would pick an arbitrary one of equal pieces: refuse them.
            const auto [where, inserted] = tokenizer.m_index.emplace(tokenizer.m_pieces[id], int(id));
            require(inserted, errc::corrupt, context, ": tokens ", where->second, " and ", id, " are the same piece");
        }
        return tokenizer;
    }

    /// Reads a tokenizer.bin file (see parse).
    static Tokenizer read(const std::filesystem::path& path, std::int64_t vocab_size) {
        MappedFile file(path);
        return parse(file.bytes(), vocab_size, nwc::detail::concat("tokenizer '", path.string(), "'"));
    }

    /// Serializes to the tokenizer.bin layout (for tests and conversions).
    std::vector<std::uint8_t> serialize() const {
        ByteWriter writer;
        writer.put_i32(m_max_token_length);
        for (std::size_t id = 0; id < m_pieces.size(); ++id) {
            writer.put_f32(m_scores[id]);
            writer.put_i32(std::int32_t(m_pieces[id].size()));
            writer.put_bytes({reinterpret_cast<const std::uint8_t*>(m_pieces[id].data()), m_pieces[id].size()});
        }
        return writer.take();
    }

    int vocab_size() const noexcept { return int(m_pieces.size()); }
    int max_token_length() const noexcept { return m_max_token_length; }
    const std::string& piece(int id) const { return m_pieces.at(std::size_t(id)); }
    float score(int id) const { return m_scores.at(std::size_t(id)); }
    /// The id of an exact piece, or -1.
    int lookup(std::string_view piece) const {
        const auto found = m_index.find(piece);
        return found == m_index.end() ? -1 : found->second;
    }

    /// Token ids of `text`, as llama2.c's encode(tokenizer, text, bos, eos) produces them.
    std::vector<int> encode(std::string_view text, bool bos, bool eos = false) const {
        std::vector<int> tokens;
        tokens.reserve(text.size() + 3);
        if (bos) tokens.push_back(bos_id);
        if (!text.empty()) {
            const int dummy_prefix = lookup(" ");
            require(dummy_prefix >= 0, errc::unsupported, "tokenizer: no \" \" token for the dummy prefix");
            tokens.push_back(dummy_prefix);
        }
        append_code_points(text, tokens);
        merge_pairs(tokens);
        if (eos) tokens.push_back(eos_id);
        return tokens;
    }

    /// The bytes of `token` when it follows `previous` (llama2.c's decode(): the leading space
    /// after BOS is dropped and <0xXX> pieces stand for the raw byte).
    std::string decode_piece(int previous, int token) const {
        require(token >= 0 && token < vocab_size(), errc::invalid_argument, "tokenizer: token id ", token, " outside [0, ", vocab_size(), ")");
        std::string_view piece = m_pieces[std::size_t(token)];
        if (previous == bos_id && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
        if (const int byte = raw_byte(piece); byte >= 0) return std::string(1, char(byte));
        return std::string(piece);
    }

    /// The text of a token sequence, piece by piece as llama2.c prints it.
    std::string decode(std::span<const int> tokens) const {
        std::string text;
        int previous = -1;
        for (int token : tokens) {
            text += decode_piece(previous, token);
            previous = token;
        }
        return text;
    }

private:
    struct StringHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view text) const noexcept { return std::hash<std::string_view>{}(text); }
    };

    /// The byte a "<0xXX>" piece stands for, or -1.
    static int raw_byte(std::string_view piece) {
        if (piece.size() != 6 || !piece.starts_with("<0x") || piece[5] != '>') return -1;
        auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
        const int high = hex(piece[3]), low = hex(piece[4]);
        return high < 0 || low < 0 ? -1 : high * 16 + low;
    }

    // run.c's code point loop, including its handling of stray continuation bytes and of code
    // points longer than 4 bytes (cut after the 4th byte).
    void append_code_points(std::string_view text, std::vector<int>& tokens) const {
        auto is_continuation = [](unsigned char byte) { return (byte & 0xC0) == 0x80; };
        std::size_t start = 0, length = 0;
        for (std::size_t i = 0; i < text.size(); ++i) {
            if (!is_continuation(static_cast<unsigned char>(text[i]))) length = 0;
            if (length == 0) start = i;
            ++length;
            if (i + 1 < text.size() && is_continuation(static_cast<unsigned char>(text[i + 1])) && length < 4) continue;
            const std::string_view code_point = text.substr(start, length);
            if (const int id = lookup(code_point); id >= 0) {
                tokens.push_back(id);
            } else {
                for (char byte : code_point) tokens.push_back(int(static_cast<unsigned char>(byte)) + byte_fallback_offset);
            }
            length = 0;
        }
    }

    // The greedy merge loop. Tokens live in a doubly linked list over their original positions; a
    // candidate is valid while neither of its two tokens has changed since it was queued (a version
    // counter per position), which is exactly "the pair is still adjacent with the same ids".
    void merge_pairs(std::vector<int>& tokens) const {
        const int count = int(tokens.size());
        if (count < 2) return;
        struct Candidate {
            float score;
            int left;
            int merged_id;
            std::uint32_t left_version, right_version;
        };
        auto lower_priority = [](const Candidate& a, const Candidate& b) {
            return a.score < b.score || (a.score == b.score && a.left > b.left);
        };
        std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> queue(lower_priority);
        const auto size = static_cast<std::size_t>(count);
        std::vector<int> next(size), previous(size);
        std::vector<std::uint32_t> version(size, 0);
        for (int i = 0; i < count; ++i) {
            next[std::size_t(i)] = i + 1 < count ? i + 1 : -1;
            previous[std::size_t(i)] = i - 1;
        }
        std::string buffer;
        auto consider = [&](int left) {
            if (left < 0) return;
            const int right = next[std::size_t(left)];
            if (right < 0) return;
            buffer = m_pieces[std::size_t(tokens[std::size_t(left)])];
            buffer += m_pieces[std::size_t(tokens[std::size_t(right)])];
            const int id = lookup(buffer);
            if (id < 0) return;
            const float score = m_scores[std::size_t(id)];
            if (!(score > -1e10f)) return;  // run.c starts its search from best_score = -1e10
            queue.push({score, left, id, version[std::size_t(left)], version[std::size_t(right)]});
        };
        for (int i = 0; i + 1 < count; ++i) consider(i);
        while (!queue.empty()) {
            const Candidate top = queue.top();
            queue.pop();
            const int left = top.left;
            const int right = next[std::size_t(left)];
            if (right < 0 || version[std::size_t(left)] != top.left_version || version[std::size_t(right)] != top.right_version) continue;
            tokens[std::size_t(left)] = top.merged_id;
            ++version[std::size_t(left)];
            ++version[std::size_t(right)];
            const int after = next[std::size_t(right)];
            next[std::size_t(left)] = after;
            if (after >= 0) previous[std::size_t(after)] = left;
            tokens[std::size_t(right)] = -1;
            consider(previous[std::size_t(left)]);
            consider(left);
        }
        std::size_t kept = 0;
        for (int i = 0; i >= 0; i = next[std::size_t(i)]) tokens[kept++] = tokens[std::size_t(i)];
        tokens.resize(kept);
    }

    int m_max_token_length = 0;
    std::vector<std::string> m_pieces;
    std::vector<float> m_scores;
    std::unordered_map<std::string, int, StringHash, std::equal_to<>> m_index;
};

}  // namespace nwc::llm
