// Weights per second of whole-model compression and decompression, per method, on real MT3
// matrices (the first four of mt3.safetensors, 1.05 M weights). The reference measured in the same
// run is the raw path: F16 bytes -> float32 -> F16 bytes through the same container.
//
// The nwc rows use the codec named by $NWC_BENCH_CODEC, or else an untrained codec of the paper's
// size (chunk 16, width 512, 4 blocks, 16 latents): speed does not depend on training.
//
//   build-*/bench/nwc_bench_pipeline --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace {

using namespace nwc;

const ModelFile& subset() {
    static const ModelFile model = [] {
        const ModelFile whole = load_model_file(std::string(NWC_DATA_DIR) + "/mt3.safetensors");
        ModelFile first;
        first.format = whole.format;
        first.source = whole.source;
        first.tensors.assign(whole.tensors.begin(), whole.tensors.begin() + 4);
        return first;
    }();
    return model;
}

std::shared_ptr<const NeuralCodec> bench_codec() {
    static const std::shared_ptr<const NeuralCodec> codec = [] {
        if (const char* path = std::getenv("NWC_BENCH_CODEC"); path != nullptr && *path != '\0')
            return std::make_shared<const NeuralCodec>(read_codec_file(path));
        CodecModel model(CodecArchitecture{16, 512, 4, 16, 4});
        model.initialize(Random(1));
        return std::make_shared<const NeuralCodec>(model.freeze());
    }();
    return codec;
}

/// Methods by index: 0 raw (reference), then the pipeline's methods.
const char* const method_names[] = {"raw", "rtn", "gptq", "ecsq", "nwc", "tcq", "lossless"};
constexpr std::int64_t method_count = std::int64_t(std::size(method_names));

MethodOptions options_for(std::int64_t method, std::int64_t threads) {
    MethodOptions options;
    options.method = method_names[method];
    options.threads = int(threads);
    options.step = 0.3f;  // ecsq ~4.3 bits per weight here; tcq's unions are 2 steps apart: half its step
    if (options.method == "tcq") options.step = 0.15f;
    options.measure = false;
    return options;
}

void set_counters(benchmark::State& state, std::int64_t weights) {
    state.SetItemsProcessed(state.iterations() * weights);
    state.SetLabel(std::string(method_names[state.range(0)]) + ", " + std::to_string(state.range(1)) + " threads");
}

void compress(benchmark::State& state) {
    const ModelFile& model = subset();
    if (state.range(0) == 0) {
        for (auto _ : state) {
            ContainerWriter writer;
            for (const ModelTensor& tensor : model.tensors) writer.add_tensor(make_raw_tensor(tensor.name, tensor.values.view(), tensor.original_dtype));
            benchmark::DoNotOptimize(writer.serialize());
        }
    } else {
        const DefaultCodec codec(options_for(state.range(0), state.range(1)), bench_codec());
        for (auto _ : state) benchmark::DoNotOptimize(codec.compress_model(model).writer.serialize());
    }
    set_counters(state, model.weight_count());
}

void decompress(benchmark::State& state) {
    const ModelFile& model = subset();
    std::vector<std::uint8_t> bytes;
    if (state.range(0) == 0) {
        ContainerWriter writer;
        writer.set_file_metadata(R"({"format":"nwc-pipeline","version":1,"source":{"source_format":"safetensors"}})");
        for (const ModelTensor& tensor : model.tensors) writer.add_tensor(make_raw_tensor(tensor.name, tensor.values.view(), tensor.original_dtype));
        bytes = writer.serialize();
    } else {
        bytes = DefaultCodec(options_for(state.range(0), state.range(1)), bench_codec()).compress_model(model).writer.serialize();
    }
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    for (auto _ : state) benchmark::DoNotOptimize(DefaultCodec::decompress_model(reader, int(state.range(1))));
    set_counters(state, model.weight_count());
}

void arguments(benchmark::internal::Benchmark* benchmark) {
    for (std::int64_t method = 0; method < method_count; ++method)
        for (std::int64_t threads : {1, 2}) benchmark->Args({method, threads});
    benchmark->ArgNames({"method", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

BENCHMARK(compress)->Apply(arguments);
BENCHMARK(decompress)->Apply(arguments);

}  // namespace

BENCHMARK_MAIN();
