// Fuzzes the llama2.c tokenizer reader: Tokenizer::parse (vocabulary read to the end of the data),
// then encode() of fixed texts and of the input's last bytes, and decode_piece() of every token.
// Invariants on success: every token id is in range and parse(serialize()) is the same vocabulary.
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "nwc/llm/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using nwc::llm::Tokenizer;
    nwc::fuzz::rejects_cleanly([&] {
        const Tokenizer tokenizer = Tokenizer::parse(std::span<const std::uint8_t>(data, size), -1, "fuzz tokenizer");
        const std::size_t tail = std::min<std::size_t>(size, 48);
        const std::string texts[] = {"Once upon a time, a little llama said: \"hi!\"\n", "\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\xA6\x99 \xFF\xFE",
                                     std::string(reinterpret_cast<const char*>(data + size - tail), tail)};
        for (const std::string& text : texts) {
            const std::vector<int> tokens = tokenizer.encode(text, true, true);
            int previous = Tokenizer::bos_id;
            for (int token : tokens) {
                NWC_FUZZ_CHECK(token >= 0 && token < tokenizer.vocab_size());
                tokenizer.decode_piece(previous, token);
                previous = token;
            }
        }
        const std::vector<std::uint8_t> written = tokenizer.serialize();
        const Tokenizer again = Tokenizer::parse(written, tokenizer.vocab_size(), "fuzz tokenizer (written back)");
        NWC_FUZZ_CHECK(again.vocab_size() == tokenizer.vocab_size());
    });
    return 0;
}
