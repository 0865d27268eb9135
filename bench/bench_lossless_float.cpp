// The lossless float codec on real weights: size (Iterations(1) rows, no timing), encode and
// decode speed per core next to a memcpy of the same output bytes measured in the same run, and
// where decode time goes (rANS alone, merge alone, CRC-32C alone).
//
//   nwc_bench_lossless_float --benchmark_counters_tabular=true
//
// Files (NWC_DATA_DIR): gptneo = gptneo125m_attn.safetensors (48 BF16 matrices, 56.6 MB),
// mt3 = mt3.safetensors (147 F16 matrices, 91.8 MB), stories = stories260K.bin's fp32 weights
// (the bytes after its 28-byte header, coded as one F32 tensor; 1.06 MB). Every tensor is coded on
// its own with default options (segments of 65536 elements, precision 12).
// Counters: ratio = stored bytes (metadata + segments) / original bytes; plane0/plane1 = bytes of
// those planes / original bytes; exp_entropy = order-0 entropy of plane 0 (bits per element,
// per tensor, element-weighted), i.e. the size an ideal coder with per-tensor tables would reach.
// Speeds: bytes_per_second = original bytes per CPU second of the benchmark thread (1 thread).
// docs/bench/lossless.md has the results and the command that produced them.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "nwc/core/file_io.hpp"
#include "nwc/entropy/lossless_float.hpp"
#include "nwc/io/safetensors.hpp"

namespace nwc_bench_lossless_float {

namespace {

struct CodedTensor {
    std::vector<std::uint8_t> original;
    nwc::LosslessFloatEncoding encoding;
    nwc::LosslessFloatLayout layout;  ///< parsed back from the metadata, as a reader would
    std::vector<std::span<const std::uint8_t>> segments;
};

struct Workload {
    std::string name;
    std::vector<CodedTensor> tensors;
    std::uint64_t bytes = 0;
};

/// Each tensor's (dtype, bytes) of a data file; empty when the file is missing.
std::vector<std::pair<nwc::dtype, std::vector<std::uint8_t>>> read_tensors(const std::string& name) {
    const std::filesystem::path path = std::filesystem::path(NWC_DATA_DIR) / name;
    std::vector<std::pair<nwc::dtype, std::vector<std::uint8_t>>> tensors;
    if (!std::filesystem::exists(path)) return tensors;
    if (path.extension() == ".bin") {  // llama2.c: 7 int32 header fields, then fp32 weights
        std::vector<std::uint8_t> bytes = nwc::read_file(path);
        tensors.emplace_back(nwc::dtype::f32, std::vector<std::uint8_t>(bytes.begin() + 28, bytes.end() - (bytes.size() - 28) % 4));
        return tensors;
    }
    const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(path);
    for (const auto& info : file.tensors()) {
        const auto raw = file.raw_bytes(info.name);
        tensors.emplace_back(info.type, std::vector<std::uint8_t>(raw.begin(), raw.end()));
    }
    return tensors;
}

/// The tensors of one file, coded with the given options (default: the codec's defaults).
const Workload& workload(const std::string& name, const nwc::LosslessFloatOptions& options = {}) {
    static std::map<std::tuple<std::string, std::uint32_t, int>, Workload> cache;
    const auto key = std::make_tuple(name, options.elements_per_segment, options.max_precision);
    auto found = cache.find(key);
    if (found != cache.end()) return found->second;
    Workload& work = cache[key];
    work.name = name;
    const std::string file = name == "gptneo" ? "gptneo125m_attn.safetensors" : name == "mt3" ? "mt3.safetensors" : "stories260K.bin";
    for (auto& [type, bytes] : read_tensors(file)) {
        CodedTensor tensor;
        tensor.original = std::move(bytes);
        tensor.encoding = nwc::lossless_float::encode(tensor.original, type, options);
        tensor.layout = nwc::LosslessFloatLayout::parse(tensor.encoding.metadata, tensor.encoding.payload_bytes(), name);
        tensor.segments.assign(tensor.encoding.segments.begin(), tensor.encoding.segments.end());
        work.bytes += tensor.original.size();
        work.tensors.push_back(std::move(tensor));
    }
    return work;
}

bool available(benchmark::State& state, const Workload& work) {
    if (!work.tensors.empty()) return true;
    state.SkipWithError(("data file for '" + work.name + "' not found under " NWC_DATA_DIR).c_str());
    return false;
}

/// Order-0 entropy of plane 0 (the exponent byte) of one tensor, in bits per element.
double exponent_entropy(const CodedTensor& tensor) {
    const std::size_t size = nwc::dtype_size(tensor.layout.type), count = tensor.original.size() / size;
    std::vector<double> counts(256, 0.0);
    for (std::size_t i = 0; i < count; ++i) {
        std::uint32_t high = 0;
        std::memcpy(&high, tensor.original.data() + i * size + size - 2, 2);
        counts[(high >> 7) & 0xFF] += 1;
    }
    double bits = 0;
    for (double c : counts)
        if (c > 0) bits -= c / double(count) * std::log2(c / double(count));
    return bits;
}

/// Sizes with state.range(0) elements per segment (0: default) and tables up to precision state.range(1) (0: default).
void size(benchmark::State& state, const std::string& name) {
    nwc::LosslessFloatOptions options;
    if (state.range(0) > 0) options.elements_per_segment = std::uint32_t(state.range(0));
    if (state.range(1) > 0) options.max_precision = int(state.range(1));
    const Workload& work = workload(name, options);
    if (!available(state, work)) return;
    for (auto _ : state) benchmark::DoNotOptimize(work.bytes);
    double stored = 0, plane0 = 0, plane1 = 0, entropy_bits = 0, elements = 0;
    for (const CodedTensor& tensor : work.tensors) {
        stored += double(tensor.encoding.stored_bytes());
        plane0 += double(tensor.encoding.plane_bytes[0]);
        plane1 += double(tensor.encoding.plane_bytes[1]);
        const double count = double(tensor.layout.element_count);
        entropy_bits += exponent_entropy(tensor) * count;
        elements += count;
    }
    state.counters["ratio"] = stored / double(work.bytes);
    state.counters["plane0"] = plane0 / double(work.bytes);
    state.counters["plane1"] = plane1 / double(work.bytes);
    state.counters["exp_entropy"] = entropy_bits / elements;
    state.counters["MB"] = double(work.bytes) / 1e6;
}

void memcpy_reference(benchmark::State& state, const std::string& name) {
    const Workload& work = workload(name);
    if (!available(state, work)) return;
    std::vector<std::uint8_t> target(work.bytes);
    for (auto _ : state) {
        std::size_t at = 0;
        for (const CodedTensor& tensor : work.tensors) {
            std::memcpy(target.data() + at, tensor.original.data(), tensor.original.size());
            at += tensor.original.size();
        }
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations() * work.bytes));
}

void encode(benchmark::State& state, const std::string& name) {
    const Workload& work = workload(name);
    if (!available(state, work)) return;
    for (auto _ : state)
        for (const CodedTensor& tensor : work.tensors) benchmark::DoNotOptimize(nwc::lossless_float::encode(tensor.original, tensor.layout.type));
    state.SetBytesProcessed(std::int64_t(state.iterations() * work.bytes));
}

/// Decodes every segment of every tensor into one preallocated output (what a loader does).
template <class Backend>
void decode(benchmark::State& state, const std::string& name, bool verify_checksum) {
    nwc::LosslessFloatOptions options;
    if (state.range(0) > 0) options.elements_per_segment = std::uint32_t(state.range(0));
    const Workload& work = workload(name, options);
    if (!available(state, work)) return;
    std::vector<std::uint8_t> target(work.bytes);
    for (auto _ : state) {
        std::size_t at = 0;
        for (const CodedTensor& tensor : work.tensors) {
            for (std::size_t s = 0; s < tensor.segments.size(); ++s) {
                const std::size_t bytes = tensor.layout.segment_output_bytes(s);
                nwc::lossless_float::decode_segment(tensor.layout, s, tensor.segments[s], std::span<std::uint8_t>(target).subspan(at, bytes), Backend{},
                                                    "bench", verify_checksum);
                at += bytes;
            }
        }
        benchmark::ClobberMemory();
    }
    std::size_t at = 0;
    for (const CodedTensor& tensor : work.tensors) {
        if (std::memcmp(target.data() + at, tensor.original.data(), tensor.original.size()) != 0) state.SkipWithError("decoded bytes differ");
        at += tensor.original.size();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations() * work.bytes));
}

/// Part of decode: the rANS streams of plane 0 only, into an int32 buffer per segment.
template <class Backend>
void decode_rans_only(benchmark::State& state, const std::string& name) {
    const Workload& work = workload(name);
    if (!available(state, work)) return;
    std::vector<std::int32_t> symbols(nwc::lossless_float::max_elements_per_segment);
    for (auto _ : state) {
        for (const CodedTensor& tensor : work.tensors) {
            const nwc::CdfTableSet& tables = tensor.layout.tables[0];
            for (const auto& segment : tensor.segments) {
                std::uint32_t stream_size;
                std::memcpy(&stream_size, segment.data() + 4, 4);
                const auto stream = segment.subspan(nwc::detail::lossless_segment_header_bytes(tensor.layout.coded_plane_count()), stream_size);
                const nwc::RansStreamIndex index = nwc::rans::read_index(stream, tables, false);
                nwc::rans::decode_segment(stream, index, tables, 0, std::span<std::int32_t>(symbols).first(index.symbol_count), Backend{});
            }
        }
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations() * work.bytes));
}

/// Part of decode: the merge of already decoded planes (plane 0 as int32, plane 1 raw), segment by segment.
template <class Backend>
void merge_only(benchmark::State& state, const std::string& name) {
    const Workload& work = workload(name);
    if (!available(state, work) || work.tensors.front().layout.type == nwc::dtype::f32) return;
    const std::size_t segment = nwc::LosslessFloatOptions{}.elements_per_segment;
    std::vector<std::int32_t> exponents(segment);
    std::vector<std::uint8_t> low(segment), target(2 * segment);
    for (std::size_t i = 0; i < segment; ++i) exponents[i] = std::int32_t(100 + i % 27), low[i] = std::uint8_t(i * 37);
    nwc::detail::FloatPlaneSources sources;
    sources.plane0 = exponents.data();
    sources.bytes[1] = low.data();
    const std::size_t segments = work.bytes / (2 * segment);
    for (auto _ : state) {
        for (std::size_t s = 0; s < segments; ++s) benchmark::DoNotOptimize(nwc::detail::merge_float_planes(nwc::dtype::bf16, sources, segment, target.data(), Backend{}));
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations() * segments * 2 * segment));
}

/// Part of decode: the CRC-32C of every segment.
void checksum_only(benchmark::State& state, const std::string& name) {
    const Workload& work = workload(name);
    if (!available(state, work)) return;
    for (auto _ : state)
        for (const CodedTensor& tensor : work.tensors)
            for (const auto& segment : tensor.segments) benchmark::DoNotOptimize(nwc::crc32c(segment.subspan(4)));
    state.SetBytesProcessed(std::int64_t(state.iterations() * work.bytes));
}

void register_all() {
    for (const std::string name : {"gptneo", "mt3", "stories"}) {
        benchmark::RegisterBenchmark(("size/" + name).c_str(), size, name)->Args({0, 0})->ArgNames({"segment", "precision"})->Iterations(1);
        if (name == "gptneo") {
            auto* variants = benchmark::RegisterBenchmark("size_variants/gptneo", size, name)->ArgNames({"segment", "precision"})->Iterations(1);
            for (std::int64_t segment : {16384, 262144, 1048576}) variants->Args({segment, 0});
            variants->Args({0, 16});
        }
        benchmark::RegisterBenchmark(("memcpy/" + name).c_str(), memcpy_reference, name)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("decode_simd/" + name).c_str(), decode<nwc::backend::simd>, name, true)->Arg(0)->ArgName("segment")->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("decode_simd_no_crc/" + name).c_str(), decode<nwc::backend::simd>, name, false)->Arg(0)->ArgName("segment")->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("decode_scalar/" + name).c_str(), decode<nwc::backend::scalar>, name, true)->Arg(0)->ArgName("segment")->Unit(benchmark::kMillisecond);
        if (name == "gptneo")
            benchmark::RegisterBenchmark("decode_simd_variants/gptneo", decode<nwc::backend::simd>, name, true)->ArgName("segment")->Arg(16384)->Arg(262144)->Arg(1048576)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("rans_only_simd/" + name).c_str(), decode_rans_only<nwc::backend::simd>, name)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("rans_only_scalar/" + name).c_str(), decode_rans_only<nwc::backend::scalar>, name)->Unit(benchmark::kMillisecond);
        if (name != "stories") {
            benchmark::RegisterBenchmark(("merge_only_simd/" + name).c_str(), merge_only<nwc::backend::simd>, name)->Unit(benchmark::kMillisecond);
            benchmark::RegisterBenchmark(("merge_only_scalar/" + name).c_str(), merge_only<nwc::backend::scalar>, name)->Unit(benchmark::kMillisecond);
        }
        benchmark::RegisterBenchmark(("crc_only/" + name).c_str(), checksum_only, name)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("encode/" + name).c_str(), encode, name)->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

// Registered before main (benchmark::benchmark_main's) runs.
[[maybe_unused]] const bool registered = (register_all(), true);

}  // namespace nwc_bench_lossless_float
