// File I/O throughput: safetensors open + read of the real MT3 file, .nwc container serialize, write
// (in memory and streamed) and parse of a 100 MB payload, each next to a plain memcpy of the same
// number of bytes in the same run; decoding a real MT3 matrix from aligned and misaligned payloads.
#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "nwc/core/random.hpp"
#include "nwc/io/container.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"

namespace nwc_bench_container {

namespace {

const std::filesystem::path mt3_path = std::filesystem::path(NWC_DATA_DIR) / "mt3.safetensors";
constexpr std::size_t container_tensors_count = 100;
constexpr std::size_t container_payload_bytes = 1'000'000;  // per tensor: 100 MB in all

const std::vector<nwc::ContainerTensor>& container_tensors() {
    static const std::vector<nwc::ContainerTensor> tensors = [] {
        nwc::Random random(5);
        std::vector<nwc::ContainerTensor> result;
        for (std::size_t index = 0; index < container_tensors_count; ++index) {
            nwc::ContainerTensor tensor;
            tensor.name = "model.layers." + std::to_string(index) + ".weight";
            tensor.original_dtype = nwc::dtype::bf16;
            tensor.shape = nwc::Shape{1024, 1024};
            tensor.method = "nwc";
            tensor.codec_index = 0;
            tensor.metadata.assign(4096, 1);
            std::vector<std::uint8_t> segment(container_payload_bytes / 16);
            for (int k = 0; k < 16; ++k) {
                for (auto& byte : segment) byte = std::uint8_t(random.below(256));
                tensor.add_segment(segment);
            }
            result.push_back(std::move(tensor));
        }
        return result;
    }();
    return tensors;
}
const std::vector<std::uint8_t> container_codec(200'000, 7);

const nwc::ContainerWriter& container_writer() {
    static const nwc::ContainerWriter writer = [] {
        nwc::ContainerWriter result;
        result.add_codec(container_codec);
        for (const nwc::ContainerTensor& tensor : container_tensors()) result.add_tensor(tensor);
        return result;
    }();
    return writer;
}

const std::vector<std::uint8_t>& container_bytes() {
    static const std::vector<std::uint8_t> bytes = container_writer().serialize();
    return bytes;
}

bool have_mt3(benchmark::State& state) {
    if (std::filesystem::exists(mt3_path)) return true;
    state.SkipWithError("mt3.safetensors not found under NWC_DATA_DIR");
    return false;
}

// The reference: copy the same bytes once, into a buffer that already exists.
void copy_reference(benchmark::State& state, std::span<const std::uint8_t> source) {
    std::vector<std::uint8_t> target(source.size());
    for (auto _ : state) {
        std::memcpy(target.data(), source.data(), source.size());
        benchmark::DoNotOptimize(target.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(source.size()));
}

void BM_Memcpy_MT3(benchmark::State& state) {
    if (!have_mt3(state)) return;
    const nwc::MappedFile file(mt3_path);
    copy_reference(state, file.bytes());
}
BENCHMARK(BM_Memcpy_MT3)->Unit(benchmark::kMillisecond)->UseRealTime();

// open + validate the header, then copy every tensor's raw bytes out.
void BM_SafetensorsOpenReadRaw_MT3(benchmark::State& state) {
    if (!have_mt3(state)) return;
    std::vector<std::uint8_t> target(std::filesystem::file_size(mt3_path));
    for (auto _ : state) {
        const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(mt3_path);
        std::size_t at = 0;
        for (const auto& info : file.tensors()) {
            const auto bytes = file.raw_bytes(info.name);
            std::memcpy(target.data() + at, bytes.data(), bytes.size());
            at += bytes.size();
        }
        benchmark::DoNotOptimize(target.data());
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(target.size()));
}
BENCHMARK(BM_SafetensorsOpenReadRaw_MT3)->Unit(benchmark::kMillisecond)->UseRealTime();

// open + read_float32 of every tensor (F16 -> F32 conversion; bytes/s counts the file's bytes).
void BM_SafetensorsOpenReadFloat32_MT3(benchmark::State& state) {
    if (!have_mt3(state)) return;
    const auto size = std::filesystem::file_size(mt3_path);
    for (auto _ : state) {
        const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(mt3_path);
        for (const auto& info : file.tensors()) benchmark::DoNotOptimize(file.read_float32(info.name).data());
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(size));
}
BENCHMARK(BM_SafetensorsOpenReadFloat32_MT3)->Unit(benchmark::kMillisecond)->UseRealTime();

// open + header validation only.
void BM_SafetensorsOpenHeader_MT3(benchmark::State& state) {
    if (!have_mt3(state)) return;
    for (auto _ : state) benchmark::DoNotOptimize(nwc::SafetensorsFile::open(mt3_path).tensor_count());
    state.SetItemsProcessed(std::int64_t(state.iterations()) * 147);
}
BENCHMARK(BM_SafetensorsOpenHeader_MT3)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Memcpy_Container(benchmark::State& state) { copy_reference(state, container_bytes()); }
BENCHMARK(BM_Memcpy_Container)->Unit(benchmark::kMillisecond)->UseRealTime();

// The reference for serialize(): the same bytes copied into a newly allocated vector, so both pay
// the page faults of fresh memory (expensive on this VM: most of serialize()'s time, see io.md).
void BM_MemcpyFresh_Container(benchmark::State& state) {
    const auto& bytes = container_bytes();
    for (auto _ : state) {
        std::vector<std::uint8_t> copy(bytes.begin(), bytes.end());
        benchmark::DoNotOptimize(copy.data());
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes.size()));
}
BENCHMARK(BM_MemcpyFresh_Container)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ContainerSerialize(benchmark::State& state) {
    const nwc::ContainerWriter& writer = container_writer();
    for (auto _ : state) benchmark::DoNotOptimize(writer.serialize().data());
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(container_bytes().size()));
}
BENCHMARK(BM_ContainerSerialize)->Unit(benchmark::kMillisecond)->UseRealTime();

// write(): header and directory, then every region streamed to a temporary file, fsync, rename.
void BM_ContainerWriteFile(benchmark::State& state) {
    const nwc::ContainerWriter& writer = container_writer();
    const auto path = std::filesystem::temp_directory_path() / ("nwc_bench_container_" + std::to_string(::getpid()) + ".nwc");
    for (auto _ : state) writer.write(path);
    std::filesystem::remove(path);
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(container_bytes().size()));
}
BENCHMARK(BM_ContainerWriteFile)->Unit(benchmark::kMillisecond)->UseRealTime();

// ContainerStreamWriter: each tensor's CRC computed and its regions appended to the temporary file
// as it is added, the directory at commit, fsync, rename (the same bytes as write()).
void BM_ContainerStreamWriteFile(benchmark::State& state) {
    const auto path = std::filesystem::temp_directory_path() / ("nwc_bench_container_" + std::to_string(::getpid()) + ".nwc");
    for (auto _ : state) {
        nwc::ContainerStreamWriter writer(path);
        writer.add_codec(container_codec);
        for (const nwc::ContainerTensor& tensor : container_tensors()) writer.add_tensor(tensor);
        writer.commit();
    }
    std::filesystem::remove(path);
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(container_bytes().size()));
}
BENCHMARK(BM_ContainerStreamWriteFile)->Unit(benchmark::kMillisecond)->UseRealTime();

// Parse the directory and read (CRC-check) every payload, metadata and codec blob.
void BM_ContainerParseVerify(benchmark::State& state) {
    const auto& bytes = container_bytes();
    for (auto _ : state) {
        const nwc::ContainerReader reader = nwc::ContainerReader::from_bytes(bytes);
        reader.verify();
        benchmark::DoNotOptimize(reader.payload(0).data());
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes.size()));
}
BENCHMARK(BM_ContainerParseVerify)->Unit(benchmark::kMillisecond)->UseRealTime();

// Directory only: what opening costs before any tensor is touched.
void BM_ContainerParseDirectory(benchmark::State& state) {
    const auto& bytes = container_bytes();
    for (auto _ : state) benchmark::DoNotOptimize(nwc::ContainerReader::from_bytes(bytes).tensor_count());
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(container_tensors_count));
}
BENCHMARK(BM_ContainerParseDirectory)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Crc32c_Container(benchmark::State& state) {
    const auto& bytes = container_bytes();
    for (auto _ : state) benchmark::DoNotOptimize(nwc::crc32c(bytes));
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes.size()));
}
BENCHMARK(BM_Crc32c_Container)->Unit(benchmark::kMillisecond)->UseRealTime();

// What a reader gains from an aligned payload: a real MT3 matrix (the largest, 1536 x 512) decoded
// from a container whose bytes start `misalignment` bytes past a 64-byte boundary. The layout puts
// this payload (>= 4 KiB) at a multiple of 64 in the file, so in memory it sits `misalignment`
// bytes off; misalignment 0 is the reference. Kinds: 0 ecsq decode (rANS, SIMD backend, 1 thread),
// 1 raw F16 -> F32 (read_raw_float32), 2 CRC-32C of the payload.
struct AlignmentWork {
    std::vector<std::uint8_t> ecsq, raw;
};
const AlignmentWork& alignment_work() {
    static const AlignmentWork work = [] {
        const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(mt3_path);
        std::string largest;
        std::int64_t most = 0;
        for (const auto& info : file.tensors())
            if (info.shape.rank() == 2 && info.shape.numel() > most) most = info.shape.numel(), largest = info.name;
        const nwc::Tensor<float> weights = file.read_float32(largest);
        nwc::MethodOptions options;
        options.method = "ecsq";
        options.threads = 1;
        options.measure = false;
        AlignmentWork result;
        nwc::ContainerWriter ecsq;
        ecsq.add_tensor(nwc::DefaultCodec(options).compress(largest, weights.view()));
        result.ecsq = ecsq.serialize();
        nwc::ContainerWriter raw;
        raw.add_tensor(nwc::make_raw_tensor(largest, weights.view(), nwc::dtype::f16));
        result.raw = raw.serialize();
        return result;
    }();
    return work;
}

void BM_DecodeMisaligned(benchmark::State& state) {
    if (!have_mt3(state)) return;
    const int kind = int(state.range(0));
    const std::size_t misalignment = std::size_t(state.range(1));
    const std::vector<std::uint8_t>& bytes = kind == 0 ? alignment_work().ecsq : alignment_work().raw;
    std::vector<std::uint8_t> storage(bytes.size() + 128);
    const auto address = reinterpret_cast<std::uintptr_t>(storage.data());
    std::uint8_t* base = storage.data() + ((64 - address % 64) % 64) + misalignment;
    std::memcpy(base, bytes.data(), bytes.size());
    const nwc::ContainerReader reader = nwc::ContainerReader::from_bytes(std::span<const std::uint8_t>(base, bytes.size()));
    const auto payload = reader.payload(0);
    if (reinterpret_cast<std::uintptr_t>(payload.data()) % 64 != misalignment) {
        state.SkipWithError("the payload is not where the layout rule puts it");
        return;
    }
    for (auto _ : state) {
        if (kind == 0) benchmark::DoNotOptimize(nwc::DefaultCodec::decompress(reader, 0, 1).data());
        if (kind == 1) benchmark::DoNotOptimize(reader.read_raw_float32(0).data());
        if (kind == 2) benchmark::DoNotOptimize(nwc::crc32c(payload));
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(payload.size()));
    state.SetItemsProcessed(std::int64_t(state.iterations()) * reader.entry(0).shape.numel());
}
BENCHMARK(BM_DecodeMisaligned)->ArgsProduct({{0, 1, 2}, {0, 1, 4, 16, 32}})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

}  // namespace nwc_bench_container
