// Weights per second of whole-model compression and decompression, per method, on real MT3
// matrices (the first four of mt3.safetensors, 1.05 M weights). The reference measured in the same
// run is the raw path: F16 bytes -> float32 -> F16 bytes through the same container.
//
// limit_fraction (decompress, one thread, ecsq, nwc, tcq and lossless): the in-situ rate over the
// rate its parts allow, measured in the same run: every segment's rANS streams decoded alone into a
// buffer (entropy), then everything after them from those symbols (rest: ecsq's and tcq's
// dequantization; nwc's decoder network, dechunking and de-normalization; lossless's narrowing,
// plane merging and widening to float32), combined as 1 / (1/r_entropy + 1/r_rest).
// 1.0 means decode_model adds nothing to its parts; issue 15 asks for at least 0.6.
//
// decompress_mt3: the same in-situ decompress of the whole MT3 transformer (147 tensors, 45.9 M
// weights, the largest 1.7% of them), the "model with many tensors" of issue 15's thread-scaling
// goal; the 1-thread row of each method is the reference for its 2-thread row (nwc only with
// NWC_BENCH_CODEC set, e.g. codecs/nwc-32x1-l300.nwcc).
//
// compress_file: file to file with 2 threads, streamed (ModelReader -> ContainerStreamWriter, what
// nwc compress runs) against the in-memory path in the same run.
//
// The nwc rows use the codec named by $NWC_BENCH_CODEC, or else an untrained codec of the paper's
// size (chunk 16, width 512, 4 blocks, 16 latents): speed does not depend on training.
//
//   build-*/bench/nwc_bench_pipeline --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <malloc.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/io/model_reader.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc_bench_pipeline {

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
    options.step = 0.3f;       // ecsq ~4.3 bits per weight here;
    options.tcq_step = 0.15f;  // tcq's unions are 2 steps apart: half its step
    // rtn, gptq: llama.cpp's Q4_0 layout (fp16 scale per 32), as docs/bench/pipeline.md's rows were
    // measured; the default grid scales decode through the same loop after unpacking a
    // code set per segment.
    options.fp16_group_scales = true;
    options.group_size = 32;
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

/// Seconds of one pass over every tensor of `reader`, split into the entropy and the rest parts
/// (see the header comment); the best of `repetitions` passes of each. Methods other than ecsq,
/// nwc, tcq and lossless give 0.
struct PartSeconds {
    double entropy = 0.0, rest = 0.0;
};
PartSeconds time_parts(const ContainerReader& reader, int repetitions) {
    using Clock = std::chrono::steady_clock;
    DecodeResources resources(reader);
    PartSeconds best{1e300, 1e300};
    std::vector<std::int32_t> symbols;  // scratch reused as the in-situ decoder reuses its own
    std::vector<std::int64_t> columns;
    std::vector<std::uint8_t> levels;
    std::vector<float> chunks;
    std::array<std::vector<std::int32_t>, detail::lossless_max_planes> plane_symbols;
    std::vector<std::uint8_t> byte_planes, stored;
    for (int repetition = 0; repetition < repetitions; ++repetition) {
        PartSeconds pass;
        for (std::size_t i = 0; i < reader.tensor_count(); ++i) {
            const ContainerEntry& entry = reader.entry(i);
            Tensor<float> output(entry.shape);
            const std::string context = "bench";
            const auto decode_entropy = [&](std::span<const std::uint8_t> bytes, const CdfTableSet& tables) {
                const auto start = Clock::now();
                const RansStreamIndex index = rans::read_index(bytes, tables);
                symbols.resize(std::size_t(index.symbol_count));
                for (std::size_t s = 0; s < index.segments.size(); ++s) {
                    const RansSegment& info = index.segments[s];
                    rans::decode_segment(bytes, index, tables, s, std::span<std::int32_t>(symbols).subspan(info.first_symbol, info.symbol_count), backend::simd{});
                }
                pass.entropy += std::chrono::duration<double>(Clock::now() - start).count();
            };
            if (entry.method == "ecsq") {
                const EcsqMethod::Layout layout = EcsqMethod::parse(entry, reader.metadata(i), resources, context);
                for (std::size_t k = 0; k < layout.segment_count(); ++k) {
                    decode_entropy(reader.segment(i, k), layout.tables);
                    const auto start = Clock::now();
                    EcsqMethod::dequantize_segment(layout, k, symbols, output.view());
                    pass.rest += std::chrono::duration<double>(Clock::now() - start).count();
                }
            } else if (entry.method == "nwc") {
                const NwcMethod::Layout layout = NwcMethod::parse(entry, reader.metadata(i), resources, context);
                const NeuralDecoder& decoder = *layout.decoder;
                for (std::size_t k = 0; k < layout.segment_count(); ++k) {
                    const NwcMethod::Layout::Segment& where = layout.segments[k];
                    decode_entropy(reader.segment(i, k), decoder.all_tables()[std::size_t(where.group)]);
                    const auto start = Clock::now();
                    columns.clear();
                    levels.clear();
                    const std::int64_t first = where.span * layout.columns_per_segment, d = layout.chunk_size;
                    for (std::int64_t c = first; c < std::min(layout.cols, first + layout.columns_per_segment); ++c)
                        if (decoder.architecture().prior_group(layout.levels[std::size_t(c)]) == where.group) {
                            columns.push_back(c);
                            levels.insert(levels.end(), std::size_t(layout.chunks_per_column), layout.levels[std::size_t(c)]);
                        }
                    const std::int64_t chunk_count = std::int64_t(levels.size());
                    chunks.resize(std::size_t(chunk_count * d));
                    decoder.decode(symbols, levels, TensorView<float>(chunks.data(), Shape{chunk_count, d}), 1, backend::simd{});
                    const DechunkSource source{chunks, columns, layout.chunks_per_column * d, layout.alpha, layout.scales, layout.axis};
                    dechunk_denormalize(source, output.view(), backend::simd{});
                    pass.rest += std::chrono::duration<double>(Clock::now() - start).count();
                }
            } else if (entry.method == "tcq") {
                const TcqMethod::Layout layout = TcqMethod::parse(entry, reader.metadata(i), resources, context);
                for (std::size_t k = 0; k < layout.segment_count(); ++k) {
                    const auto bytes = reader.segment(i, k);
                    auto start = Clock::now();
                    symbols.resize(std::size_t(layout.segment_weights(k)));
                    context_rans::decode(bytes, layout.tables, layout.machine, std::span<std::int32_t>(symbols), backend::simd{});
                    pass.entropy += std::chrono::duration<double>(Clock::now() - start).count();
                    start = Clock::now();
                    TcqMethod::dequantize_segment(layout, k, symbols, output.view());
                    pass.rest += std::chrono::duration<double>(Clock::now() - start).count();
                }
            } else if (entry.method == "lossless") {
                // As lossless_float::decode_segment and LosslessMethod::decode_segment: the coded
                // planes' rANS streams (entropy), then narrowing, merging and widening (rest).
                const LosslessFloatLayout& codec = LosslessMethod::parse(entry, reader.metadata(i), resources, context).codec;
                for (std::size_t k = 0; k < codec.segment_count; ++k) {
                    const std::uint32_t elements = codec.segment_elements(k);
                    auto start = Clock::now();
                    const auto parts = lossless_float::segment_planes(codec, k, reader.segment(i, k), context, false);
                    for (std::size_t p = 0; p < codec.plane_count(); ++p) {
                        if (codec.modes[p] != FloatPlaneMode::coded) continue;
                        plane_symbols[p].resize(elements);
                        const RansStreamIndex index = rans::read_index(parts[p], codec.tables[p], false);
                        for (std::size_t g = 0; g < index.segments.size(); ++g) {
                            const RansSegment& info = index.segments[g];
                            rans::decode_segment(parts[p], index, codec.tables[p], g,
                                                 std::span<std::int32_t>(plane_symbols[p]).subspan(info.first_symbol, info.symbol_count), backend::simd{});
                        }
                    }
                    pass.entropy += std::chrono::duration<double>(Clock::now() - start).count();
                    start = Clock::now();
                    detail::FloatPlaneSources sources;
                    sources.plane0 = plane_symbols[0].data();
                    byte_planes.resize(std::size_t(elements) * codec.plane_count());
                    for (std::size_t p = 1; p < codec.plane_count(); ++p) {
                        std::uint8_t* scratch = byte_planes.data() + p * elements;
                        if (codec.modes[p] == FloatPlaneMode::raw) sources.bytes[p] = parts[p].data();
                        else if (codec.modes[p] == FloatPlaneMode::constant) std::memset(scratch, codec.constants[p], elements), sources.bytes[p] = scratch;
                        else detail::narrow_plane(plane_symbols[p].data(), elements, scratch, backend::simd{}), sources.bytes[p] = scratch;
                    }
                    stored.resize(std::size_t(elements) * codec.element_size());
                    detail::merge_float_planes(codec.type, sources, elements, stored.data(), backend::simd{});
                    float* target = output.data() + codec.first_element(k);
                    if (codec.type == dtype::f32)
                        std::memcpy(target, stored.data(), stored.size());
                    else if (codec.type == dtype::bf16)
                        convert_to_float(std::span<const bfloat16>(reinterpret_cast<const bfloat16*>(stored.data()), elements), std::span<float>(target, elements), backend::simd{});
                    else
                        convert_to_float(std::span<const half>(reinterpret_cast<const half*>(stored.data()), elements), std::span<float>(target, elements), backend::simd{});
                    pass.rest += std::chrono::duration<double>(Clock::now() - start).count();
                }
            }
            benchmark::DoNotOptimize(output.data());
        }
        best.entropy = std::min(best.entropy, pass.entropy);
        best.rest = std::min(best.rest, pass.rest);
    }
    return best;
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
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) benchmark::DoNotOptimize(DefaultCodec::decompress_model(reader, int(state.range(1))));
    const double in_situ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / double(state.iterations());
    set_counters(state, model.weight_count());
    const std::string method = method_names[state.range(0)];
    if (state.range(1) == 1 && (method == "ecsq" || method == "nwc" || method == "tcq" || method == "lossless")) {
        const PartSeconds parts = time_parts(reader, 5);
        state.counters["entropy_Mw/s"] = double(model.weight_count()) / parts.entropy * 1e-6;
        state.counters["rest_Mw/s"] = double(model.weight_count()) / parts.rest * 1e-6;
        state.counters["limit_fraction"] = (parts.entropy + parts.rest) / in_situ;
    }
}

/// The whole of mt3.safetensors coded once per method (index as method_names), kept for the run.
const std::vector<std::uint8_t>& whole_mt3_container(std::int64_t method) {
    static std::vector<std::uint8_t> containers[method_count];
    std::vector<std::uint8_t>& bytes = containers[method];
    if (bytes.empty()) {
        const ModelFile model = load_model_file(std::string(NWC_DATA_DIR) + "/mt3.safetensors");
        if (method == 0) {
            ContainerWriter writer;
            writer.set_file_metadata(R"({"format":"nwc-pipeline","version":1,"source":{"source_format":"safetensors"}})");
            for (const ModelTensor& tensor : model.tensors) writer.add_tensor(make_raw_tensor(tensor.name, tensor.values.view(), tensor.original_dtype));
            bytes = writer.serialize();
        } else {
            bytes = DefaultCodec(options_for(method, 2), bench_codec()).compress_model(model).writer.serialize();
        }
    }
    return bytes;
}

void decompress_mt3(benchmark::State& state) {
    // Every row with the same allocator: the freed model's pages stay in the heap. Otherwise glibc
    // trims them or not depending on what earlier rows left at the heap's top, and a row that drew
    // the trimming paid ~45 k page faults per decode (raw: 148 ms with 1 thread, 23 ms with 2).
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (method_names[state.range(0)] == std::string("nwc") && std::getenv("NWC_BENCH_CODEC") == nullptr) {
        state.SkipWithError("nwc on the whole MT3 needs NWC_BENCH_CODEC (the paper-size default codec would code 45.9 M weights for minutes)");
        return;
    }
    const ContainerReader reader = ContainerReader::from_bytes(whole_mt3_container(state.range(0)));
    // Once untimed: the first decode of a run also grows the heap (page faults the others reuse).
    std::int64_t weights = DefaultCodec::decompress_model(reader, int(state.range(1))).weight_count();
    for (auto _ : state) {
        const ModelFile model = DefaultCodec::decompress_model(reader, int(state.range(1)));
        weights = model.weight_count();
    }
    set_counters(state, weights);
}

/// The subset as a safetensors file (ModelReader reads files), removed at exit.
struct SubsetFile {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_bench_pipeline_" + std::to_string(::getpid()) + ".safetensors");
    std::filesystem::path output = std::filesystem::path(path).replace_extension(".nwc");
    SubsetFile() { write_model_file(subset(), path); }
    ~SubsetFile() {
        std::error_code ignored;
        std::filesystem::remove(path, ignored);
        std::filesystem::remove(output, ignored);
    }
};

/// File to file, as nwc compress runs without --calib, 2 threads: streamed 1 reads the model with
/// ModelReader and codes it into a ContainerStreamWriter (compress_model_into); streamed 0, the
/// reference in the same run, is the in-memory path (load_model_file, compress_model, write).
/// Both write the same bytes; the rows show what streaming costs or saves in time.
void compress_file(benchmark::State& state) {
    static const SubsetFile file;
    const DefaultCodec codec(options_for(state.range(0), 2), bench_codec());
    for (auto _ : state) {
        if (state.range(1) == 1) {
            const ModelReader reader = ModelReader::open(file.path);
            ContainerStreamWriter output(file.output);
            benchmark::DoNotOptimize(codec.compress_model_into(reader, output));
            output.commit();
        } else {
            codec.compress_model(load_model_file(file.path)).writer.write(file.output);
        }
    }
    state.SetItemsProcessed(state.iterations() * subset().weight_count());
    state.SetLabel(std::string(method_names[state.range(0)]) + (state.range(1) == 1 ? ", streamed" : ", in memory") + ", 2 threads");
}

void arguments(benchmark::internal::Benchmark* benchmark) {
    for (std::int64_t method = 0; method < method_count; ++method)
        for (std::int64_t threads : {1, 2}) benchmark->Args({method, threads});
    benchmark->ArgNames({"method", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

BENCHMARK(compress)->Apply(arguments);
BENCHMARK(decompress)->Apply(arguments);
BENCHMARK(decompress_mt3)
    ->ArgsProduct({{0, 1, 3, 4, 5, 6}, {1, 2}})
    ->ArgNames({"method", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK(compress_file)
    ->ArgsProduct({{3, 4, 5, 6}, {0, 1}})
    ->ArgNames({"method", "streamed"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);

}  // namespace

}  // namespace nwc_bench_pipeline
