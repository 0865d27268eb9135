// GPU decoding of whole tensors into fp16 device memory with nwc::cuda::decompress_to_device:
// nwc (rANS + g_s + de-normalization) beside cuBLAS's SGEMM of the decoder's block shape, and
// ecsq / tcq (rANS or context rANS + dequantization) beside the CPU decoder (simd, one thread) of
// the same tensor, all measured in the same run. Without a GPU it prints a line and exits 0.
//
//   NWC_CODEC_DIR=codecs nwc_bench_cuda_decode --benchmark_counters_tabular=true
//
// Configurations as bench/bench_decode.cpp: the trained codecs/nwc-32x1-l100.nwcc on 4096 x 4096
// and 11008 x 4096, an untrained codec of the paper's size (width 512, 4 blocks) on 4096 x 4096.
// Counters: weights/s (wall time, including the payload upload and host-side parsing),
// dec_GFLOP/s (the decoder's GEMM FLOPs per second), peak_GFLOP/s (cuBLAS SGEMM, 32768 x W x W);
// decode_grid_to_device (method 0 ecsq, 1 tcq with 8 states, 2 tcq with 256; 4096 x 4096, the
// methods' default steps, ~3 bits per weight): weights/s and cpu_weights/s (CPU, one thread,
// float output).
// With NWC_BENCH_FILES=a.nwc:b.nwc, decode_file_to_device/<file>/batched:B decodes every tensor
// of each file into fp16 device memory (weights/s over the whole file): B = 0 one
// decompress_to_device call after another, B = 1 decompress_tensors_to_device (ecsq and tcq
// tensors in one launch); beside the CPU decoder of the whole file (simd, one thread, float
// output: cpu_weights/s).
#define EIGEN_NO_CUDA  // Eigen is host-only here (see cuda/decompress.cuh)

#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>

#include "synthetic_weights.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/cuda/decompress.cuh"
#include "nwc/cuda/device.cuh"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"

namespace {

std::filesystem::path codec_dir() {
    if (const char* dir = std::getenv("NWC_CODEC_DIR")) return dir;
    return std::filesystem::path(__FILE__).parent_path().parent_path() / "codecs";
}

/// What Codec::compress writes for an nwc tensor, without the model-file half of the pipeline.
std::vector<std::uint8_t> container_of(const nwc::Tensor<float>& weights, const nwc::MethodOptions& options, const nwc::NeuralCodec& codec) {
    nwc::EncodedMatrix encoded = nwc::NwcMethod::encode(weights.view(), nullptr, options, nwc::MethodResources{std::shared_ptr<const nwc::NeuralCodec>(std::shared_ptr<void>(), &codec)});
    nwc::ContainerTensor tensor = std::move(encoded.tensor);
    tensor.name = "w";
    tensor.shape = weights.shape();
    tensor.codec_index = 0;
    nwc::ContainerWriter writer;
    writer.add_codec(nwc::serialize_codec_decoder(codec.decoder()));
    writer.add_tensor(std::move(tensor));
    return writer.serialize();
}

std::shared_ptr<const nwc::NeuralCodec> codec_for(int config) {
    static const auto trained = std::make_shared<const nwc::NeuralCodec>(nwc::read_codec_file(codec_dir() / "nwc-32x1-l100.nwcc"));
    static const auto paper = [] {
        nwc::CodecModel model(nwc::CodecArchitecture{16, 512, 4, 16, 4});
        model.initialize(nwc::Random(2024));
        return std::make_shared<const nwc::NeuralCodec>(model.freeze());
    }();
    return config == 2 ? paper : trained;
}

using nwc::bench::synthetic_weights;

const std::vector<std::uint8_t>& container(int config) {
    static std::map<int, std::vector<std::uint8_t>> cache;
    if (auto found = cache.find(config); found != cache.end()) return found->second;
    nwc::MethodOptions options;
    options.method = "nwc";
    options.measure = false;
    options.threads = int(std::max(1u, std::thread::hardware_concurrency()));
    return cache[config] = container_of(synthetic_weights(config == 1 ? 11008 : 4096, 4096, std::uint64_t(config + 1)), options, *codec_for(config));
}

double cublas_peak_gflops(int width) {
    const std::int64_t rows = 32768;
    nwc::cuda::DeviceBuffer<float> a(std::size_t(rows * width)), b(std::size_t(width) * width), c(std::size_t(rows * width));
    a.fill_bytes(0);
    b.fill_bytes(0);
    nwc::cuda::CublasHandle cublas;
    const float one = 1.0f, zero = 0.0f;
    auto run = [&] {
        NWC_CUBLAS_CHECK(cublasSgemm(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, width, int(rows), width, &one, b.data(), width, a.data(), width, &zero,
                                     c.data(), width));
    };
    run();
    NWC_CUDA_CHECK(cudaDeviceSynchronize());
    const int calls = 50;
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k) run();
    NWC_CUDA_CHECK(cudaDeviceSynchronize());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return 2.0 * double(rows) * width * width * calls / seconds * 1e-9;
}

void decode_to_device(benchmark::State& state) {
    const int config = int(state.range(0));
    const auto& bytes = container(config);
    const auto reader = nwc::ContainerReader::from_bytes(std::span<const std::uint8_t>(bytes));
    const auto shape = codec_for(config)->architecture().decoder_shape();
    const auto& entry = reader.entry(0);
    const double chunks = double((entry.shape[0] + 15) / 16 * entry.shape[1]);
    nwc::cuda::GpuDecodeContext context;
    for (auto _ : state) {
        const auto out = nwc::cuda::decompress_to_device<nwc::half>(reader, 0, context);
        benchmark::DoNotOptimize(out.data());
    }
    const double calls = double(state.iterations());
    state.counters["weights/s"] = benchmark::Counter(calls * double(entry.shape.numel()), benchmark::Counter::kIsRate);
    state.counters["dec_GFLOP/s"] = benchmark::Counter(calls * chunks * shape.gemm_flops_per_row() * 1e-9, benchmark::Counter::kIsRate);
    state.counters["peak_GFLOP/s"] = cublas_peak_gflops(shape.width);
}

const std::vector<std::uint8_t>& grid_container(int method) {
    static std::map<int, std::vector<std::uint8_t>> cache;
    if (auto found = cache.find(method); found != cache.end()) return found->second;
    nwc::MethodOptions options;
    options.method = method == 0 ? "ecsq" : "tcq";
    options.tcq_states = method == 2 ? 256 : 8;
    options.measure = false;
    options.threads = int(std::max(1u, std::thread::hardware_concurrency()));
    const nwc::Tensor<float> weights = synthetic_weights(4096, 4096, 7);
    nwc::EncodedMatrix encoded = method == 0 ? nwc::EcsqMethod::encode(weights.view(), nullptr, options, nwc::MethodResources{})
                                             : nwc::TcqMethod::encode(weights.view(), nullptr, options, nwc::MethodResources{});
    nwc::ContainerTensor tensor = std::move(encoded.tensor);
    tensor.name = "w";
    tensor.shape = weights.shape();
    nwc::ContainerWriter writer;
    writer.add_tensor(std::move(tensor));
    return cache[method] = writer.serialize();
}

void decode_grid_to_device(benchmark::State& state) {
    const int method = int(state.range(0));
    const auto reader = nwc::ContainerReader::from_bytes(std::span<const std::uint8_t>(grid_container(method)));
    const auto& entry = reader.entry(0);
    nwc::cuda::GpuDecodeContext context;
    for (auto _ : state) {
        const auto out = nwc::cuda::decompress_to_device<nwc::half>(reader, 0, context);
        benchmark::DoNotOptimize(out.data());
    }
    const double weights = double(entry.shape.numel());
    state.counters["weights/s"] = benchmark::Counter(double(state.iterations()) * weights, benchmark::Counter::kIsRate);
    state.counters["bits/weight"] = 8.0 * double(entry.payload_size + entry.metadata_size) / weights;
    // The same-run reference: the CPU decoder (simd, one thread) of the same tensor.
    nwc::DecodeResources resources(reader);
    const auto plan = nwc::detail::make_decode_plan(reader, 0, resources, nwc::BuiltinDecodings{});
    nwc::Tensor<float> decoded(entry.shape);
    const int calls = 3;
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k) nwc::detail::decode_plans<nwc::backend::simd>(reader, std::vector{plan}, {&decoded}, 1, {}, 1);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.counters["cpu_weights/s"] = calls * weights / seconds;
}

void decode_file_to_device(benchmark::State& state, const std::string& path) {
    const auto reader = nwc::ContainerReader::open(path);
    std::vector<std::size_t> tensors;  // the weight tensors (not the pipeline's RoPE correction bits)
    std::int64_t weights = 0;
    for (std::size_t i = 0; i < reader.tensor_count(); ++i)
        if (!reader.entry(i).name.starts_with("__nwc__.")) {
            tensors.push_back(i);
            weights += reader.entry(i).shape.numel();
        }
    const bool batched = state.range(0) != 0;
    nwc::cuda::GpuDecodeContext context;
    for (auto _ : state) {
        if (batched) {
            const auto out = nwc::cuda::decompress_tensors_to_device<nwc::half>(reader, tensors, context);
            benchmark::DoNotOptimize(out.data());
            continue;
        }
        for (std::size_t i : tensors) {
            const auto out = nwc::cuda::decompress_to_device<nwc::half>(reader, i, context);
            benchmark::DoNotOptimize(out.data());
        }
    }
    state.counters["weights/s"] = benchmark::Counter(double(state.iterations()) * double(weights), benchmark::Counter::kIsRate);
    state.counters["bits/weight"] = 8.0 * double(std::filesystem::file_size(path)) / double(weights);
    state.counters["tensors"] = double(tensors.size());
    nwc::DecodeResources resources(reader);
    std::vector<nwc::Tensor<float>> decoded;
    std::vector<nwc::Tensor<float>*> outputs;
    std::vector<decltype(nwc::detail::make_decode_plan(reader, 0, resources, nwc::BuiltinDecodings{}))> plans;
    for (std::size_t i : tensors) {
        plans.push_back(nwc::detail::make_decode_plan(reader, i, resources, nwc::BuiltinDecodings{}));
        decoded.emplace_back(reader.entry(i).shape);
    }
    for (auto& tensor : decoded) outputs.push_back(&tensor);
    const int calls = 2;
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k) nwc::detail::decode_plans<nwc::backend::simd>(reader, plans, outputs, 1, {}, 1);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.counters["cpu_weights/s"] = calls * double(weights) / seconds;
}

}  // namespace

BENCHMARK(decode_to_device)->Arg(0)->Arg(1)->Arg(2)->ArgName("config")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(decode_grid_to_device)->Arg(0)->Arg(1)->Arg(2)->ArgName("method")->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
    if (!nwc::cuda::gpu_available()) {
        std::printf("no CUDA device: nothing to measure\n");
        return 0;
    }
    benchmark::Initialize(&argc, argv);
    if (const char* list = std::getenv("NWC_BENCH_FILES")) {
        const std::string files = list;
        for (std::size_t begin = 0; begin < files.size();) {
            const std::size_t end = std::min(files.find(':', begin), files.size());
            const std::string path = files.substr(begin, end - begin);
            begin = end + 1;
            benchmark::RegisterBenchmark(("decode_file_to_device/" + std::filesystem::path(path).filename().string()).c_str(), decode_file_to_device, path)
                ->Arg(0)
                ->Arg(1)
                ->ArgName("batched")
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
        }
    }
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
