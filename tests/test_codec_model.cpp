// CodecModel / CodecTrainer / codec files: a tiny training run lowers the loss, training is
// byte-identical for any thread count, codec files round-trip, and every corruption or truncation
// of a codec file (or of a decoder half) is an nwc::error.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <vector>

#include "nwc/codec/codec_evaluation.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/sha256.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/container.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"
#include "error_testing.hpp"

namespace nwc_test_codec_model {

using namespace nwc;

namespace {

// Chunks with structure a codec can exploit: a smooth random walk plus a little noise, unit scale.
TrainingCorpus synthetic_corpus(int chunks, std::uint64_t seed) {
    Random random(seed);
    std::vector<float> values;
    values.reserve(std::size_t(chunks) * 16);
    for (int c = 0; c < chunks; ++c) {
        float walk = random.normal();
        for (int i = 0; i < 16; ++i) {
            walk = 0.9f * walk + 0.45f * random.normal();
            values.push_back(walk);
        }
    }
    std::vector<HeldOutMatrix> held_out{{"synthetic", 32, 16, std::vector<float>(values.begin(), values.begin() + 512), 16}};
    return TrainingCorpus::from_chunks(std::move(values), 16, std::move(held_out));
}

TrainingOptions tiny_options(int threads) {
    TrainingOptions options;
    options.architecture = {16, 16, 1, 4, 4};
    options.loss.lambda = 50.0;
    options.steps = 60;
    options.batch = 64;
    options.shard_rows = 16;
    options.learning_rate = 1e-2;
    options.seed = 7;
    options.threads = threads;
    return options;
}

std::vector<std::uint8_t> train_codec_bytes(const TrainingCorpus& corpus, int threads) {
    CodecTrainer trainer(tiny_options(threads), corpus);
    for (int step = 0; step < 20; ++step) trainer.step();
    return serialize_codec(trainer.freeze(dtype::f16, 16, R"({"test":true})"));
}

}  // namespace

TEST_CASE("sha256 of known inputs", "[codec_model]") {
    const std::string abc = "abc";
    CHECK(detail::sha256_hex({reinterpret_cast<const std::uint8_t*>(abc.data()), abc.size()}) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(detail::sha256_hex({}) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const std::vector<std::uint8_t> million(1000000, std::uint8_t('a'));
    CHECK(detail::sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("CodecTrainer: a tiny training run lowers the loss", "[codec_model]") {
    const TrainingCorpus corpus = synthetic_corpus(4096, 1);
    CodecTrainer trainer(tiny_options(1), corpus);
    std::vector<double> losses;
    for (int step = 0; step < 60; ++step) {
        const StepMetrics metrics = trainer.step();
        REQUIRE(std::isfinite(metrics.loss));
        losses.push_back(metrics.loss);
    }
    const double first = std::accumulate(losses.begin(), losses.begin() + 10, 0.0) / 10;
    const double last = std::accumulate(losses.end() - 10, losses.end(), 0.0) / 10;
    INFO("loss " << first << " -> " << last);
    CHECK(last < 0.7 * first);

    // The frozen codec codes and decodes: symbols are integers around the medians, decode is finite.
    const NeuralCodec codec = trainer.freeze(dtype::f32);
    const auto& matrix = corpus.held_out().front();
    const std::vector<std::uint8_t> levels(std::size_t(matrix.chunk_count()), 0);
    const TensorView<const float> chunks(matrix.chunks.data(), {matrix.chunk_count(), 16});
    const std::vector<std::int32_t> symbols = codec.encode(chunks, levels);
    CHECK(symbols.size() == std::size_t(matrix.chunk_count() * 4));
    std::vector<float> decoded(matrix.chunks.size());
    codec.decode(symbols, levels, TensorView<float>(decoded.data(), {matrix.chunk_count(), 16}));
    double error = 0.0, energy = 0.0;
    for (std::size_t i = 0; i < decoded.size(); ++i) {
        error += (decoded[i] - matrix.chunks[i]) * (decoded[i] - matrix.chunks[i]);
        energy += matrix.chunks[i] * matrix.chunks[i];
    }
    CHECK(error < energy);  // better than decoding zeros
}

TEST_CASE("CodecTrainer: same seed and data give byte-identical codec files for any thread count", "[codec_model]") {
    const TrainingCorpus corpus = synthetic_corpus(2048, 2);
    const auto one = train_codec_bytes(corpus, 1);
    const auto again = train_codec_bytes(corpus, 1);
    const auto two = train_codec_bytes(corpus, 2);
    CHECK(one == again);
    CHECK(one == two);
}

TEST_CASE("codec file: round trip through bytes and through a file", "[codec_model]") {
    const TrainingCorpus corpus = synthetic_corpus(1024, 3);
    for (dtype storage : {dtype::f32, dtype::f16, dtype::bf16}) {
        CodecTrainer trainer(tiny_options(1), corpus);
        for (int step = 0; step < 5; ++step) trainer.step();
        const NeuralCodec codec = trainer.freeze(storage, 14, R"({"name":"round trip"})");
        const std::vector<std::uint8_t> bytes = serialize_codec(codec);
        const NeuralCodec parsed = parse_codec(bytes);
        CHECK(parsed.architecture() == codec.architecture());
        CHECK(parsed.weight_dtype() == storage);
        CHECK(parsed.provenance() == codec.provenance());
        for (int level = 0; level < 4; ++level) {
            CHECK(parsed.tables(level).checksum() == codec.tables(level).checksum());
            CHECK(std::equal(parsed.medians(level).begin(), parsed.medians(level).end(), codec.medians(level).begin(),
                             codec.medians(level).end()));
        }
        const auto original = codec.encoder().parameters(), loaded = parsed.encoder().parameters();
        for (std::size_t p = 0; p < original.size(); ++p) CHECK(original[p]->value == loaded[p]->value);
        const auto original_decoder = codec.decoder().network().parameters(), loaded_decoder = parsed.decoder().network().parameters();
        for (std::size_t p = 0; p < original_decoder.size(); ++p) CHECK(original_decoder[p]->value == loaded_decoder[p]->value);
        CHECK(serialize_codec(parsed) == bytes);
        // The stored prior parameters rebuild the very same tables (and other ones on request).
        const CodecModel rebuilt = CodecModel::from_codec(parsed);
        CHECK(serialize_codec(rebuilt.freeze(storage, 14, parsed.provenance())) == bytes);
        CHECK(rebuilt.freeze(storage, 16).tables(0).precision() == 16);

        // The decoder half alone, and in place inside a larger buffer.
        const std::vector<std::uint8_t> half = serialize_codec_decoder(codec.decoder());
        CHECK(serialize_codec_decoder(parse_codec_decoder(half).network().shape() == codec.decoder().network().shape()
                                          ? parse_codec_decoder(half)
                                          : NeuralDecoder()) == half);
        std::vector<std::uint8_t> embedded = half;
        embedded.insert(embedded.end(), {1, 2, 3});
        std::size_t consumed = 0;
        parse_codec_decoder(embedded, "embedded", &consumed);
        CHECK(consumed == half.size());
        CHECK_THROWS_AS(parse_codec_decoder(embedded), nwc::error);  // trailing bytes without `consumed`
    }
    const std::filesystem::path path = std::filesystem::temp_directory_path() / "nwc_test_codec_model.nwcc";
    CodecTrainer trainer(tiny_options(1), corpus);
    trainer.step();
    const NeuralCodec codec = trainer.freeze();
    write_codec_file(path, codec);
    CHECK(serialize_codec(read_codec_file(path)) == serialize_codec(codec));
    std::filesystem::remove(path);
}

TEST_CASE("codec file: every truncation and every flipped byte is an nwc::error", "[codec_model]") {
    const TrainingCorpus corpus = synthetic_corpus(512, 4);
    CodecTrainer trainer(tiny_options(1), corpus);
    trainer.step();
    const std::vector<std::uint8_t> bytes = serialize_codec(trainer.freeze(dtype::f16, 12));
    for (std::size_t length = 0; length < bytes.size(); ++length) {
        INFO("truncated to " << length << " of " << bytes.size() << " bytes");
        CHECK_THROWS_AS(parse_codec(std::span<const std::uint8_t>(bytes.data(), length)), nwc::error);
    }
    for (std::size_t at = 0; at < bytes.size(); ++at) {
        std::vector<std::uint8_t> corrupt = bytes;
        corrupt[at] ^= 0x5A;
        INFO("byte " << at << " flipped");
        CHECK_THROWS_AS(parse_codec(corrupt), nwc::error);
    }
    const std::vector<std::uint8_t> half = serialize_codec_decoder(trainer.freeze(dtype::f16, 12).decoder());
    for (std::size_t length = 0; length < half.size(); ++length)
        CHECK_THROWS_AS(parse_codec_decoder(std::span<const std::uint8_t>(half.data(), length)), nwc::error);
    // Specific ids: wrong magic is corrupt, a future version unsupported, a short file truncated.
    std::vector<std::uint8_t> wrong_magic = bytes;
    wrong_magic[0] = 'X';
    try {
        parse_codec(wrong_magic);
        FAIL("no error");
    } catch (const nwc::error& e) {
        CHECK(e.id() == errc::corrupt);
    }
    std::vector<std::uint8_t> future = bytes;
    future[4] = 2;
    try {
        parse_codec(future);
        FAIL("no error");
    } catch (const nwc::error& e) {
        CHECK(e.id() == errc::unsupported);
    }
    try {
        parse_codec(std::span<const std::uint8_t>(bytes.data(), bytes.size() / 2));
        FAIL("no error");
    } catch (const nwc::error& e) {
        CHECK(e.id() == errc::truncated);
    }
}

TEST_CASE("codec evaluation: real rANS bytes track the ideal rate; ECSQ matches theory", "[codec_model]") {
    const TrainingCorpus corpus = synthetic_corpus(2048, 5);
    CodecTrainer trainer(tiny_options(1), corpus);
    for (int step = 0; step < 30; ++step) trainer.step();
    const NeuralCodec codec = trainer.freeze();
    for (int level = 0; level < 4; ++level) {
        const RateDistortion rd = evaluate_codec(codec, corpus.held_out(), level);
        CHECK(rd.weights == 512);
        CHECK(rd.coded_bits >= rd.ideal_bits);
        CHECK(rd.coded_bits <= rd.ideal_bits + 8.0 * 200);  // stream header and flushed states
        CHECK(rd.mse() > 0.0);
    }
    // Unit Gaussian values, step 1/4: ECSQ entropy is close to h(X) - log2(step) = 2.047 + 2 bits
    // and the MSE to step^2 / 12.
    Random random(9);
    std::vector<float> values(1 << 16);
    for (float& value : values) value = random.normal();
    const std::vector<HeldOutMatrix> gaussian{{"gaussian", 4096, 16, values, 16}};
    const RateDistortion ecsq = evaluate_ecsq(gaussian, 0.25f);
    CHECK(ecsq.ideal_bits_per_weight() == Approx(4.047).margin(0.03));
    CHECK(ecsq.mse() == Approx(0.0625 / 12).epsilon(0.03));
    CHECK(ecsq.bits_per_weight() >= ecsq.ideal_bits_per_weight());
}

TEST_CASE("shipped codecs: files reference them by hash, and a retired codec still decodes its files", "[codec_model]") {
    const std::filesystem::path shipped = std::filesystem::path(NWC_CODEC_DIR) / "nwc-32x1-l300.nwcc";
    const std::filesystem::path retired = std::filesystem::path(NWC_CODEC_DIR) / "retired" / "nwc-32x1-l300-tail1e-2.nwcc";
    Random random(5);
    Tensor<float> weights(Shape{48, 40});
    for (float& value : weights.values()) value = 0.05f * random.normal();
    for (const auto& path : {shipped, retired}) {
        INFO(path.string());
        const auto codec = std::make_shared<const NeuralCodec>(read_codec_file(path));
        MethodOptions options;
        options.method = "nwc";
        options.threads = 1;
        options.alpha = 1.5f;
        std::vector<float> decoded[2];
        for (const bool embed : {false, true}) {
            options.embed_codec = embed;
            const DefaultCodec coder(options, codec);
            const std::vector<std::uint8_t> blob = coder.decoder_blob();
            CHECK(is_codec_reference(blob) == !embed);
            if (!embed) CHECK(blob.size() == codec_reference_bytes);
            ContainerWriter writer;
            writer.add_codec(blob);
            writer.add_tensor(coder.compress("w", weights.view()));
            const std::vector<std::uint8_t> bytes = writer.serialize();
            decoded[embed] = DefaultCodec::decompress(ContainerReader::from_bytes(bytes), 0).values();
        }
        CHECK(decoded[0] == decoded[1]);  // the reference resolves to the very decoder the file was coded with
    }
    // The two codecs share their networks but not their tables, so their references differ; and a
    // reference that nothing on the search path holds is errc::unsupported, naming the hash.
    std::vector<std::uint8_t> unknown = codec_reference_blob(serialize_codec_decoder(read_codec_file(shipped).decoder()));
    CHECK(unknown != codec_reference_blob(serialize_codec_decoder(read_codec_file(retired).decoder())));
    unknown[10] ^= 1;
    CHECK(testing::error_of([&] { resolve_codec_blob(unknown, "codec 0"); }) == errc::unsupported);
    // The message names the hash and the folders searched, the retired one among them.
    CHECK_THROWS_WITH(resolve_codec_blob(unknown, "codec 0"), Catch::Contains("SHA-256") && Catch::Contains("retired"));
}

}  // namespace nwc_test_codec_model
