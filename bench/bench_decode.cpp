// End-to-end nwc decoding (rANS + decoder MLP g_s + de-normalization) of whole tensors through
// Codec<Backend>::decompress, beside Eigen's SGEMM peak measured in the same run.
//
//   NWC_CODEC_DIR=codecs nwc_bench_decode --benchmark_counters_tabular=true
//
// Configurations (docs/bench/decode.md has the results):
// - trained: codecs/nwc-32x1-l100.nwcc (width 32, 1 block) on full 4096 x 4096 and 11008 x 4096
//   matrices drawn with real-weight statistics (per-column std log-normal around 0.02, Student-t
//   tails with 5 degrees of freedom), and on real GPT-Neo and MT3 matrices from NWC_DATA_DIR;
// - paper: an untrained codec of the paper's size (width 512, 4 blocks) from CodecModel(...).freeze()
//   (speed does not depend on training) on the first 512 rows of 4096 x 4096 and 4096 x 11008.
// Counters: weights/s (per CPU second of the calling thread with 1 thread, per wall second with 2),
// dec_GFLOP/s = the decoder's GEMM FLOPs per second (same time base),
// %peak = dec_GFLOP/s / (threads x Eigen's single-thread SGEMM peak of the same hidden width W:
// the best of rows x W times W x W with rows = the decoder's tile, measured once in this process).
// bf16_decoder_distortion: the distortion a bf16 decoder GEMM (bf16 inputs, fp32 accumulation)
// would add, on real GPT-Neo matrices with the trained codec (no timing).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <ctime>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "synthetic_weights.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc_bench_decode {

namespace {

std::filesystem::path codec_dir() {
    if (const char* dir = std::getenv("NWC_CODEC_DIR")) return dir;
    return std::filesystem::path(__FILE__).parent_path().parent_path() / "codecs";
}

std::shared_ptr<const nwc::NeuralCodec> trained_codec() {
    static const auto codec = std::make_shared<const nwc::NeuralCodec>(nwc::read_codec_file(codec_dir() / "nwc-32x1-l100.nwcc"));
    return codec;
}

std::shared_ptr<const nwc::NeuralCodec> paper_codec() {
    static const auto codec = [] {
        nwc::CodecModel model(nwc::CodecArchitecture{16, 512, 4, 16, 4});
        model.initialize(nwc::Random(2024));
        return std::make_shared<const nwc::NeuralCodec>(model.freeze());
    }();
    return codec;
}

using nwc::bench::synthetic_weights;

struct Workload {
    std::string name;
    std::shared_ptr<const nwc::NeuralCodec> codec;
    std::vector<std::uint8_t> container;
    std::int64_t weights = 0;
    std::int64_t chunks = 0;
    std::size_t tensors = 0;
};

Workload compress(std::string name, std::shared_ptr<const nwc::NeuralCodec> codec, const std::vector<nwc::Tensor<float>>& matrices) {
    nwc::MethodOptions options;
    options.method = "nwc";
    options.measure = false;
    options.threads = 2;
    const nwc::Codec<nwc::backend::simd> composed(options, codec);
    nwc::ContainerWriter writer;
    writer.add_codec(composed.decoder_blob());
    Workload workload{std::move(name), codec, {}, 0, 0, matrices.size()};
    for (std::size_t k = 0; k < matrices.size(); ++k) {
        writer.add_tensor(composed.compress("w" + std::to_string(k), matrices[k].view()));
        workload.weights += matrices[k].shape().numel();
        workload.chunks += (matrices[k].rows() + 15) / 16 * matrices[k].cols();
    }
    workload.container = writer.serialize();
    return workload;
}

std::vector<nwc::Tensor<float>> real_matrices(const std::string& file, std::size_t count) {
    const auto safetensors = nwc::SafetensorsFile::open(std::filesystem::path(NWC_DATA_DIR) / file);
    std::vector<nwc::Tensor<float>> matrices;
    for (const auto& info : safetensors.tensors())
        if (info.shape.rank() == 2 && matrices.size() < count) matrices.push_back(safetensors.read_float32(info.name));
    return matrices;
}

const Workload& workload(int index) {
    static std::map<int, Workload> cache;
    if (auto found = cache.find(index); found != cache.end()) return found->second;
    Workload made;
    switch (index) {
        case 0: made = compress("trained 4096x4096", trained_codec(), {synthetic_weights(4096, 4096, 1)}); break;
        case 1: made = compress("trained 11008x4096", trained_codec(), {synthetic_weights(11008, 4096, 2)}); break;
        case 2: made = compress("trained gptneo 12x768x768", trained_codec(), real_matrices("gptneo125m_attn.safetensors", 12)); break;
        case 3: made = compress("trained mt3 24 matrices", trained_codec(), real_matrices("mt3.safetensors", 24)); break;
        case 4: made = compress("paper 512 of 4096x4096", paper_codec(), {synthetic_weights(512, 4096, 1)}); break;
        default: made = compress("paper 512 rows of 4096x11008", paper_codec(), {synthetic_weights(512, 11008, 2)}); break;
    }
    return cache.emplace(index, std::move(made)).first->second;
}

/// CPU seconds of the calling thread: the peak below is per CPU second, like the 1-thread rates.
double thread_cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
}

/// Eigen's single-thread SGEMM GFLOP/s (per CPU second) for the decoder's block GEMM shape
/// (tile x W times W x W), the best of 5 trials of 0.2 s.
double eigen_peak_gflops(int width) {
    static std::map<int, double> cache;
    if (auto found = cache.find(width); found != cache.end()) return found->second;
    const Eigen::Index tile = nwc::ResidualMLP<float>::tile_rows_for(width), w = width;
    nwc::RowMajorMatrix<float> a = nwc::RowMajorMatrix<float>::Random(tile, w), b = nwc::RowMajorMatrix<float>::Random(w, w), c(tile, w);
    double best = 0;
    for (int trial = 0; trial < 5; ++trial) {
        const double start = thread_cpu_seconds();
        int calls = 0;
        double elapsed = 0;
        do {
            c.noalias() = a * b.transpose();
            benchmark::DoNotOptimize(c.data());
            ++calls;
            elapsed = thread_cpu_seconds() - start;
        } while (elapsed < 0.2);
        best = std::max(best, 2.0 * double(tile) * double(w) * double(w) * calls / elapsed * 1e-9);
    }
    return cache[width] = best;
}

template <class Backend>
void decode(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    const int threads = int(state.range(1));
    const nwc::ContainerReader reader = nwc::ContainerReader::from_bytes(std::span<const std::uint8_t>(work.container));
    const nwc::ResidualMLPShape shape = work.codec->architecture().decoder_shape();
    const double peak = eigen_peak_gflops(shape.width);
    for (auto _ : state)
        for (std::size_t k = 0; k < work.tensors; ++k) {
            const nwc::Tensor<float> out = nwc::Codec<Backend>::decompress(reader, k, threads);
            benchmark::DoNotOptimize(out.values().data());
        }
    const double calls = double(state.iterations());
    const double gflop = calls * double(work.chunks) * shape.gemm_flops_per_row() * 1e-9;
    state.counters["weights/s"] = benchmark::Counter(calls * double(work.weights), benchmark::Counter::kIsRate);
    state.counters["dec_GFLOP/s"] = benchmark::Counter(gflop, benchmark::Counter::kIsRate);
    state.counters["peak_GFLOP/s"] = peak;
    // kIsRate divides by the (real) time at reporting: %peak = GFLOP/s / (threads x peak) x 100.
    state.counters["%peak"] = benchmark::Counter(gflop * 100.0 / (peak * threads), benchmark::Counter::kIsRate);
    state.counters["threads"] = threads;
    state.SetLabel(work.name + " " + std::string(Backend::name));
}

void configs(benchmark::internal::Benchmark* bench) {
    // One thread decodes on the calling thread: rates per CPU second, robust on a shared machine.
    for (int config = 0; config < 6; ++config) bench->Args({config, 1});
    bench->ArgNames({"config", "threads"})->Unit(benchmark::kMillisecond)->MinTime(1.0);
}
void configs_threaded(benchmark::internal::Benchmark* bench) {
    for (int config = 0; config < 6; ++config) bench->Args({config, 2});
    bench->ArgNames({"config", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
}

void eigen_sgemm_peak(benchmark::State& state) {
    double peak = 0;
    for (auto _ : state) peak = eigen_peak_gflops(int(state.range(0)));
    state.counters["peak_GFLOP/s"] = peak;
}


/// g_s with every GEMM input (activations and weights) rounded to bf16 and fp32 accumulation: what
/// an AVX512-BF16 (vdpbf16ps) GEMM would compute. Everything else as ResidualMLP::infer (scalar).
void infer_bf16_emulated(const nwc::ResidualMLP<float>& network, const nwc::RowMajorMatrix<float>& input, std::span<const std::uint8_t> levels,
                         nwc::RowMajorMatrix<float>& output) {
    using Matrix = nwc::RowMajorMatrix<float>;
    auto bf16 = [](Matrix m) {
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nwc::to_float(nwc::to_bfloat16(m.data()[i]));
        return m;
    };
    const auto parameters = network.parameters();
    const nwc::ResidualMLPShape& shape = network.shape();
    Matrix hidden = bf16(input) * bf16(parameters[0]->value).transpose();
    hidden.rowwise() += parameters[1]->value.row(0);
    const Matrix& embedding = parameters[parameters.size() - 3]->value;
    for (int block = 0; block < shape.blocks; ++block) {
        const std::size_t base = 2 + 4 * std::size_t(block);
        const Matrix product = bf16(hidden) * bf16(parameters[base]->value).transpose();
        for (Eigen::Index row = 0; row < hidden.rows(); ++row)
            nwc::detail::block_epilogue_row<float>(product.row(row).data(), parameters[base + 1]->value.data(), parameters[base + 2]->value.data(),
                                                   parameters[base + 3]->value.data(), embedding.row(levels[std::size_t(row)]).data(),
                                                   hidden.row(row).data(), shape.width, nwc::backend::scalar{});
    }
    output = bf16(hidden) * bf16(parameters[parameters.size() - 2]->value).transpose();
    output.rowwise() += parameters[parameters.size() - 1]->value.row(0);
}

/// Rate-distortion cost of a bf16 decoder GEMM: normalized-domain MSE of the trained codec's
/// reconstruction of real GPT-Neo matrices with the fp32 decoder and with bf16 GEMM inputs (same
/// symbols, so the rate is unchanged and only the distortion moves).
void bf16_decoder_distortion(benchmark::State& state) {
    const auto codec = trained_codec();
    const nwc::Chunker chunker;
    const auto matrices = real_matrices("gptneo125m_attn.safetensors", 4);
    double squared_fp32 = 0, squared_bf16 = 0, squared_between = 0, count = 0;
    for (auto _ : state) {
        for (const auto& matrix : matrices) {
            const nwc::ChunkedWeights split = chunker.split(matrix.view());
            const std::int64_t rows = std::int64_t(split.chunks.size()) / 16;
            const std::vector<std::uint8_t> levels(static_cast<std::size_t>(rows), 0);
            const nwc::TensorView<const float> chunks(split.chunks.data(), nwc::Shape{rows, 16});
            const std::vector<std::int32_t> symbols = codec->encode(chunks, levels);
            std::vector<float> fp32(split.chunks.size());
            codec->decode(symbols, levels, nwc::TensorView<float>(fp32.data(), nwc::Shape{rows, 16}), 1, nwc::backend::scalar{});
            nwc::RowMajorMatrix<float> latents(rows, 16), bf16;
            for (std::int64_t r = 0; r < rows; ++r)
                for (int c = 0; c < 16; ++c) latents(r, c) = float(symbols[std::size_t(r * 16 + c)]) + codec->medians(0)[std::size_t(c)];
            infer_bf16_emulated(codec->decoder().network(), latents, levels, bf16);
            for (std::size_t k = 0; k < fp32.size(); ++k) {
                squared_fp32 += double(fp32[k] - split.chunks[k]) * double(fp32[k] - split.chunks[k]);
                squared_bf16 += double(bf16.data()[k] - split.chunks[k]) * double(bf16.data()[k] - split.chunks[k]);
                squared_between += double(bf16.data()[k] - fp32[k]) * double(bf16.data()[k] - fp32[k]);
            }
            count += double(fp32.size());
        }
    }
    state.counters["mse_fp32"] = squared_fp32 / count;
    state.counters["mse_bf16"] = squared_bf16 / count;
    state.counters["mse_bf16_vs_fp32"] = squared_between / count;
    state.counters["increase_%"] = 100.0 * (squared_bf16 - squared_fp32) / squared_fp32;
}

}  // namespace

BENCHMARK(eigen_sgemm_peak)->Arg(32)->Arg(512)->ArgName("width")->Iterations(1);
BENCHMARK(decode<nwc::backend::scalar>)->Apply(configs);
BENCHMARK(decode<nwc::backend::simd>)->Apply(configs);
BENCHMARK(decode<nwc::backend::simd>)->Apply(configs_threaded);

BENCHMARK(bf16_decoder_distortion)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace nwc_bench_decode
