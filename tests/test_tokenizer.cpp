// llama2.c tokenizer: exact ids, agreement with a direct port of run.c's O(n^2) encode, decoding,
// the protocol's token count on the evaluation text, and hostile tokenizer files.
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "llm_test_support.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/random.hpp"
#include "nwc/llm/tokenizer.hpp"

namespace nwc_test_tokenizer {

using nwc::errc;
using nwc::llm::Tokenizer;
using namespace nwc::llm::testing;

namespace {

const Tokenizer& stories_tokenizer() {
    static const Tokenizer tokenizer = Tokenizer::read(data_path("tok512.bin"), 512);
    return tokenizer;
}

// run.c's encode() transcribed as directly as possible: linear rescans after every merge.
std::vector<int> run_c_encode(const Tokenizer& t, const std::string& text, bool bos, bool eos) {
    std::vector<int> tokens;
    if (bos) tokens.push_back(1);
    if (!text.empty()) tokens.push_back(t.lookup(" "));
    std::string buffer;
    for (std::size_t c = 0; c < text.size(); ++c) {
        if ((text[c] & 0xC0) != 0x80) buffer.clear();
        buffer += text[c];
        const char next = c + 1 < text.size() ? text[c + 1] : '\0';
        if ((next & 0xC0) == 0x80 && buffer.size() < 4) continue;
        const int id = t.lookup(buffer);
        if (id != -1) {
            tokens.push_back(id);
        } else {
            for (char byte : buffer) tokens.push_back(int(static_cast<unsigned char>(byte)) + 3);
        }
        buffer.clear();
    }
    while (true) {
        float best_score = -1e10f;
        int best_id = -1, best_index = -1;
        for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
            const int id = t.lookup(t.piece(tokens[i]) + t.piece(tokens[i + 1]));
            if (id != -1 && t.score(id) > best_score) {
                best_score = t.score(id);
                best_id = id;
                best_index = int(i);
            }
        }
        if (best_index == -1) break;
        tokens[std::size_t(best_index)] = best_id;
        tokens.erase(tokens.begin() + best_index + 1);
    }
    if (eos) tokens.push_back(2);
    return tokens;
}

std::vector<std::uint8_t> token_file(std::int32_t max_length, const std::vector<std::pair<float, std::string>>& tokens) {
    nwc::ByteWriter writer;
    writer.put_i32(max_length);
    for (const auto& [score, piece] : tokens) {
        writer.put_f32(score);
        writer.put_i32(std::int32_t(piece.size()));
        writer.put_bytes({reinterpret_cast<const std::uint8_t*>(piece.data()), piece.size()});
    }
    return writer.take();
}

// A valid minimal vocabulary: <unk>, <s>, </s>, 256 byte tokens, " ", "a", " a".
std::vector<std::pair<float, std::string>> minimal_vocabulary() {
    std::vector<std::pair<float, std::string>> tokens{{0.0f, "<unk>"}, {0.0f, "\n<s>\n"}, {0.0f, "\n</s>\n"}};
    const char* digits = "0123456789ABCDEF";
    for (int byte = 0; byte < 256; ++byte) tokens.push_back({0.0f, std::string("<0x") + digits[byte / 16] + digits[byte % 16] + ">"});
    tokens.push_back({-1.0f, " "});
    tokens.push_back({-2.0f, "a"});
    tokens.push_back({-0.5f, " a"});
    return tokens;
}

errc parse_error(const std::vector<std::uint8_t>& bytes, std::int64_t vocab_size) {
    try {
        Tokenizer::parse(bytes, vocab_size, "test tokenizer");
    } catch (const nwc::error& problem) {
        return problem.id();
    }
    FAIL("hostile tokenizer was accepted");
    return errc::io;
}

}  // namespace

TEST_CASE("tokenizer: tok512.bin loads and serializes back to the same bytes", "[tokenizer][data]") {
    const Tokenizer& t = stories_tokenizer();
    CHECK(t.vocab_size() == 512);
    CHECK(t.max_token_length() == 7);
    CHECK(t.piece(1) == "\n<s>\n");
    CHECK(t.piece(2) == "\n</s>\n");
    CHECK(t.piece(3) == "<0x00>");
    CHECK(t.lookup(" ") == 410);
    CHECK(t.lookup(" a") == 261);
    CHECK(t.lookup("no such piece") == -1);
    CHECK(t.serialize() == nwc::read_file(data_path("tok512.bin")));
}

TEST_CASE("tokenizer: known ids, derived with a separate Python port of run.c's encode", "[tokenizer][data]") {
    const Tokenizer& t = stories_tokenizer();
    CHECK(t.encode("", true) == std::vector<int>{1});
    CHECK(t.encode("", false).empty());
    // " " (410) + "a" (412) merge into " a" (261).
    CHECK(t.encode("a", true) == std::vector<int>{1, 261});
    CHECK(t.encode("Once upon a time, there was a little girl named Lily.", true) ==
          std::vector<int>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426});
    // "\n" has no piece: byte fallback 0x0A + 3 = 13.
    CHECK(t.encode("Hello\n\nworld", true) == std::vector<int>{1, 346, 306, 414, 13, 13, 424, 304, 341});
    // Multi-byte code points outside the vocabulary fall back to their UTF-8 bytes + 3.
    CHECK(t.encode("The café costs 5€ — naïve 🙂!", true) == std::vector<int>{1,   291, 280, 412, 431, 485, 280, 414, 356, 419, 410, 480, 503,
                                                                             410, 481, 297, 412, 198, 178, 360, 410, 243, 162, 156, 133, 443});
    // Invalid UTF-8: a stray continuation byte and 0xFF.
    CHECK(t.encode("x\x80\xff", true) == std::vector<int>{1, 410, 123, 131, 258});
    CHECK(t.encode("Lily", false, true) == std::vector<int>{317, 2});
}

TEST_CASE("tokenizer: the heap merge equals run.c's rescanning merge on random texts", "[tokenizer][data]") {
    const Tokenizer& t = stories_tokenizer();
    const std::string text = read_text("tinystories_eval.txt");
    nwc::Random random(11);
    const int samples = full_size_checks ? 300 : 60;
    for (int sample = 0; sample < samples; ++sample) {
        const std::size_t start = random.below(text.size() - 400), length = random.below(400);
        const std::string slice = text.substr(start, length);
        REQUIRE(t.encode(slice, true) == run_c_encode(t, slice, true, false));
    }
    for (int sample = 0; sample < samples; ++sample) {  // arbitrary bytes, mostly invalid UTF-8
        std::string bytes(random.below(40), '\0');
        for (char& byte : bytes) byte = char(random.below(256));
        REQUIRE(t.encode(bytes, sample % 2 == 0, sample % 3 == 0) == run_c_encode(t, bytes, sample % 2 == 0, sample % 3 == 0));
    }
}

TEST_CASE("tokenizer: the evaluation text gives the protocol's 127,512 tokens", "[tokenizer][data]") {
    const std::vector<int> tokens = stories_tokenizer().encode(read_text("tinystories_eval.txt"), true);
    CHECK(tokens.size() == 127512);
    CHECK(tokens.front() == 1);
    // Newlines have no piece and no merge touches them, so line-by-line encoding must agree.
    const std::string text = read_text("tinystories_eval.txt");
    const std::string first_line = text.substr(0, text.find('\n'));
    const std::vector<int> line_tokens = stories_tokenizer().encode(first_line, true);
    CHECK(std::equal(line_tokens.begin(), line_tokens.end(), tokens.begin()));
    CHECK(tokens[line_tokens.size()] == 13);
}

TEST_CASE("tokenizer: decode strips the space after BOS and turns <0xXX> into bytes", "[tokenizer][data]") {
    const Tokenizer& t = stories_tokenizer();
    for (const std::string text : {"Once upon a time, there was a little girl named Lily.", "Hello\n\nworld", "The café costs 5€ — naïve 🙂!"}) {
        const std::vector<int> tokens = t.encode(text, true);
        CHECK(t.decode(tokens) == "\n<s>\n" + text);
        CHECK(t.decode(std::span<const int>(tokens).subspan(1)) == " " + text);
    }
    CHECK(t.decode_piece(1, 261) == "a");
    CHECK(t.decode_piece(0, 261) == " a");
    CHECK(t.decode_piece(5, 13) == "\n");
    CHECK_THROWS_AS(t.decode_piece(0, 512), nwc::error);
}

TEST_CASE("tokenizer: a minimal valid vocabulary parses, reading until the end when the size is -1", "[tokenizer]") {
    const auto bytes = token_file(6, minimal_vocabulary());
    const Tokenizer t = Tokenizer::parse(bytes, -1);
    CHECK(t.vocab_size() == 262);
    CHECK(t.encode("aa", true) == std::vector<int>{1, 261, 260});
    CHECK(Tokenizer::parse(bytes, 262).vocab_size() == 262);
}

TEST_CASE("tokenizer: hostile files are refused with nwc::error", "[tokenizer][hostile]") {
    const auto valid = token_file(6, minimal_vocabulary());
    // Every truncation.
    for (std::size_t cut = 0; cut < valid.size(); cut += 7) CHECK(parse_error({valid.begin(), valid.begin() + cut}, 262) == errc::truncated);
    CHECK(parse_error(valid, 263) == errc::truncated);                             // fewer tokens than the model's vocabulary
    CHECK(parse_error(valid, 261) == errc::corrupt);                               // trailing bytes
    CHECK(parse_error(token_file(0, minimal_vocabulary()), -1) == errc::corrupt);  // max_token_length 0
    CHECK(parse_error(token_file(-5, minimal_vocabulary()), -1) == errc::corrupt);
    CHECK(parse_error(token_file(1 << 30, minimal_vocabulary()), -1) == errc::limit);
    CHECK(parse_error(token_file(2, minimal_vocabulary()), -1) == errc::corrupt);  // a piece longer than max_token_length
    auto vocabulary = minimal_vocabulary();
    vocabulary[100].first = std::numeric_limits<float>::quiet_NaN();
    CHECK(parse_error(token_file(6, vocabulary), -1) == errc::corrupt);
    vocabulary = minimal_vocabulary();
    vocabulary.back().second = " ";  // duplicate piece
    CHECK(parse_error(token_file(6, vocabulary), -1) == errc::corrupt);
    vocabulary = minimal_vocabulary();
    vocabulary.back().second = std::string("a\0b", 3);
    CHECK(parse_error(token_file(6, vocabulary), -1) == errc::corrupt);
    vocabulary = minimal_vocabulary();
    vocabulary.resize(200);  // too small for byte fallback
    CHECK(parse_error(token_file(6, vocabulary), -1) == errc::corrupt);
    auto negative_length = valid;
    const std::int32_t minus_one = -1;
    std::memcpy(negative_length.data() + 4 + 4, &minus_one, 4);  // length of token 0
    CHECK(parse_error(negative_length, 262) == errc::corrupt);
    auto huge_length = valid;
    const std::int32_t huge = 0x7FFFFFFF;
    std::memcpy(huge_length.data() + 4 + 4, &huge, 4);
    CHECK(parse_error(huge_length, 262) == errc::corrupt);
    CHECK(parse_error(valid, 0) == errc::invalid_argument);
    CHECK_THROWS_AS(Tokenizer::read(data_path("no_such_tokenizer.bin"), 512), nwc::error);
}

TEST_CASE("tokenizer: a vocabulary without \" \" cannot add the dummy prefix", "[tokenizer]") {
    auto vocabulary = minimal_vocabulary();
    vocabulary[259].second = "b";
    const Tokenizer t = Tokenizer::parse(token_file(6, vocabulary), -1);
    CHECK(t.encode("", true) == std::vector<int>{1});
    try {
        t.encode("a", true);
        FAIL("missing dummy prefix accepted");
    } catch (const nwc::error& problem) {
        CHECK(problem.id() == errc::unsupported);
    }
}

}  // namespace nwc_test_tokenizer
