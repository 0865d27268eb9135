// Small, real nwc files for the reliability tests (test_corruption, test_concurrency) and for the
// fuzzers' seed corpora (fuzz/make_seeds.cpp): every byte comes from the project's own writers.
// Everything is synthetic (nwc::Random), so nothing here needs the shared data folder.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/codec/training_corpus.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"

namespace nwc::reliability {

/// A codec of `architecture` trained `steps` steps (batch 128) on Gaussian chunks drawn with
/// `seed`: a valid codec, not a good one, made the same way every time.
inline NeuralCodec briefly_trained_codec(const CodecArchitecture& architecture, int steps, std::uint64_t seed) {
    Random random(seed);
    std::vector<float> chunks(16 * 2048);
    for (float& value : chunks) value = float(random.normal());
    const TrainingCorpus corpus = TrainingCorpus::from_chunks(std::move(chunks), 16);  // the trainer refers to it
    TrainingOptions options;
    options.architecture = architecture;
    options.steps = steps;
    options.batch = 128;
    options.learning_rate = 3e-3;
    options.threads = 1;
    CodecTrainer trainer(options, corpus);
    for (int step = 0; step < options.steps; ++step) trainer.step();
    // Tail mass 1e-9, the default it was made with: the checked-in fuzz seeds hold tiny_random_codec.
    return trainer.freeze(dtype::f16, 16, "{}", 1e-9);
}

/// A deliberately tiny neural codec (width 16, one block, 2 latents, one prior shared by the 4
/// levels), trained for a few steps on Gaussian chunks: enough for valid nwc containers, and
/// cheap to parse (its rANS decode tables are what a decode of a damaged file spends time on).
inline std::shared_ptr<const NeuralCodec> tiny_random_codec() {
    static const std::shared_ptr<const NeuralCodec> codec =
        std::make_shared<const NeuralCodec>(briefly_trained_codec(CodecArchitecture{16, 16, 1, 2, 4, false}, 30, 2024));
    return codec;
}

/// A model of two coded matrices (F32 and BF16), a raw F32 vector and a raw I32 tensor.
inline ModelFile small_model(std::uint64_t seed = 7) {
    Random random(seed);
    const auto gaussian = [&](Shape shape, float scale) {
        Tensor<float> values(shape);
        for (float& value : values.values()) value = scale * float(random.normal());
        return values;
    };
    ModelFile model;
    model.format = ModelFormat::safetensors;
    model.source = {{"source_format", "safetensors"}};
    model.tensors.push_back({"layers.0.attention.wq", dtype::f32, Shape{32, 16}, gaussian(Shape{32, 16}, 0.02f), {}});
    Tensor<float> rounded = gaussian(Shape{16, 48}, 0.05f);
    for (float& value : rounded.values()) value = to_float(to_bfloat16(value));
    model.tensors.push_back({"layers.0.feed_forward.w1", dtype::bf16, Shape{16, 48}, std::move(rounded), {}});
    model.tensors.push_back({"layers.0.attention_norm", dtype::f32, Shape{16}, gaussian(Shape{16}, 1.0f), {}});
    std::vector<std::uint8_t> ids(4 * 4);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::uint8_t(i % 4 == 0 ? i / 4 : 0);
    model.tensors.push_back({"token_ids", dtype::i32, Shape{4}, {}, std::move(ids)});
    return model;
}

/// Options for `method` that keep the files small: two segments per coded matrix.
inline MethodOptions small_options(std::string method) {
    MethodOptions options;
    options.method = method;
    options.bits = 4;
    options.step = 0.5f;
    options.tcq_step = 0.5f;
    options.weights_per_segment = 256;
    options.threads = 1;
    return options;
}

/// small_model() compressed with `method` (rtn, gptq, ecsq, tcq, lossless or nwc with tiny_random_codec()).
inline std::vector<std::uint8_t> small_container(std::string method) {
    const DefaultCodec codec(small_options(method), method == "nwc" ? tiny_random_codec() : nullptr);
    return codec.compress_model(small_model()).writer.serialize();
}

/// One container holding every kind of tensor: rtn, gptq, ecsq, tcq and nwc matrices (the nwc decoder
/// embedded as codec 0), an rtn BF16 matrix with fp16 scales, a lossless BF16 matrix, a raw F32 vector and a raw I32 tensor, with the
/// pipeline's file metadata.
inline std::vector<std::uint8_t> mixed_container() {
    const ModelFile model = small_model();
    const std::shared_ptr<const NeuralCodec> codec = tiny_random_codec();
    ContainerWriter writer;
    writer.set_file_metadata(R"({"format":"nwc-pipeline","version":1,"source":{"source_format":"safetensors"},"method":"mixed"})");
    writer.add_codec(DefaultCodec(small_options("nwc"), codec).decoder_blob());
    const ModelTensor& matrix = model.tensors[0];
    for (std::string method : {"rtn", "gptq", "ecsq", "tcq", "nwc"}) {
        const DefaultCodec coder(small_options(method), method == "nwc" ? codec : nullptr);
        writer.add_tensor(coder.compress(matrix.name + "." + std::string(method), matrix.values.view()));
    }
    MethodOptions q4_0 = small_options("rtn");  // the other rtn layout: fp16 scales per 32
    q4_0.fp16_group_scales = true;
    q4_0.group_size = 32;
    writer.add_tensor(DefaultCodec(q4_0).compress(model.tensors[1].name, model.tensors[1].values.view(), nullptr, nullptr, dtype::bf16));
    const DefaultCodec raw(small_options("rtn"));
    const DefaultCodec lossless(small_options("lossless"));
    writer.add_tensor(lossless.compress(model.tensors[1].name + ".lossless", model.tensors[1].values.view(), nullptr, nullptr, dtype::bf16));
    writer.add_tensor(raw.compress(model.tensors[2].name, model.tensors[2].values.view()));
    writer.add_tensor(make_raw_tensor(model.tensors[3].name, dtype::i32, model.tensors[3].shape, model.tensors[3].raw_bytes));
    return writer.serialize();
}

/// A tiny llama2.c model file (dim 8, one layer, vocabulary 16): with a shared classifier and
/// as many KV heads as heads, or with its own classifier and grouped-query attention.
inline std::vector<std::uint8_t> tiny_llama2c(bool shared_classifier = true) {
    llm::LlamaConfig config;
    config.dim = 8;
    config.hidden_dim = 16;
    config.n_layers = 1;
    config.n_heads = 2;
    config.n_kv_heads = shared_classifier ? 2 : 1;
    config.vocab_size = 16;
    config.seq_len = 4;
    config.shared_classifier = shared_classifier;
    llm::Llama2cModel model;
    model.weights = llm::LlamaWeights::zeros(config);
    Random random(5);
    model.weights.for_each_tensor([&](const std::string&, Tensor<float>& tensor, const Shape&) {
        for (float& value : tensor.values()) value = 0.1f * float(random.normal());
    });
    std::tie(model.rope_real, model.rope_imag) = llm::llama2c_rope_tables(config);
    return llm::serialize_llama2c(model);
}

/// A tiny llama2.c model (as tiny_llama2c(true)) whose stored RoPE tables differ from the computed
/// ones in a few entries, as another libm's would, compressed with ecsq: the container holds the
/// bit-packed RoPE corrections (detail::rope_correction_bits_name) next to the coded tensors.
inline std::vector<std::uint8_t> llama2c_container_with_rope_corrections() {
    ModelFile model;
    model.format = ModelFormat::llama2c;
    llm::LlamaConfig config;
    config.dim = 8, config.hidden_dim = 16, config.n_layers = 1, config.n_heads = 2, config.n_kv_heads = 2;
    config.vocab_size = 16, config.seq_len = 4, config.shared_classifier = true;
    model.source = {{"source_format", "llama2c"}, {"llama2c", detail::llama_config_json(config)}};
    llm::LlamaWeights weights = llm::LlamaWeights::zeros(config);
    Random random(5);
    weights.for_each_tensor([&](const std::string& name, Tensor<float>& values, const Shape& shape) {
        for (float& value : values.values()) value = 0.1f * float(random.normal());
        model.tensors.push_back({name, dtype::f32, shape, values, {}});
    });
    const auto [real, imag] = llm::llama2c_rope_tables(config);
    std::vector<std::int32_t> corrections;
    for (const std::int64_t index : {std::int64_t(1), std::int64_t(2), real.numel() + 3}) {  // +1, -1, +3 ulps
        const float computed = index < real.numel() ? real[index] : imag[index - real.numel()];
        const std::int64_t offset = index == 2 ? -1 : index == 1 ? 1 : 3;
        corrections.push_back(std::int32_t(index));
        corrections.push_back(std::int32_t(std::uint32_t(std::int64_t(float_bits(computed)) + offset)));
    }
    model.rope_corrections = Tensor<std::int32_t>(Shape{3, 2}, std::move(corrections));
    return DefaultCodec(small_options("ecsq")).compress_model(model).writer.serialize();
}

/// small_model() as if read from a Hugging Face directory with a tokenizer: its files carried as
/// raw U8 tensors "__nwc__.file.<name>" (binary bytes and an empty file included).
inline std::vector<std::uint8_t> container_with_source_files() {
    ModelFile model = small_model();
    model.files = {{"added_tokens.json", {}}, {"tokenizer.json", {'{', '"', 'v', '"', ':', '1', '}'}}, {"tokenizer.model", {0x0A, 0x00, 0xFF, 0x80}}};
    return DefaultCodec(small_options("ecsq")).compress_model(model).writer.serialize();
}

/// Every tensor of `reader` decoded one by one through the method decoders; integer tensors
/// (which have no float32 form) come back empty, their payload CRC checked.
template <class Backend = backend::default_backend>
std::vector<Tensor<float>> decode_every_tensor(const ContainerReader& reader, int threads = 1) {
    std::vector<Tensor<float>> tensors;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (entry.method == "raw" && !is_floating_dtype(entry.original_dtype)) {
            reader.payload(index);
            tensors.emplace_back();
        } else {
            tensors.push_back(Codec<Backend>::decompress(reader, index, threads));
        }
    }
    return tensors;
}

}  // namespace nwc::reliability
