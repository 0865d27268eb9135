// The CUDA decoder against the CPU reference:
// - rANS on the GPU (one warp per segment) gives exactly the CPU's symbols, escapes, partial last
//   steps and several segments included, for table sets that fit shared memory and one that does not;
// - decompress_to_device<float / half / bfloat16> of nwc tensors agrees with the CPU decoder (scalar)
//   within 1e-4 relative (|gpu - cpu| <= 1e-4 (|cpu| + rms(cpu)); cuBLAS sums in another order),
//   for per-column and per-row scales, with and without importance levels;
// - context-coded rANS (tcq's trellis machine with 8 and 256 states, and a hand-made machine of
//   three contexts with stride 3 and a negative addend) on the GPU gives exactly the CPU's values,
//   escapes and 1..32 lanes included;
// - decompress_to_device of ecsq and tcq tensors is bit-identical to the CPU decoder (float, and
//   half / bfloat16 as the same conversion of the CPU's floats), for every normalization axis,
//   with and without LDLQ, a narrow last strip and several segments, on the default stream and on
//   a non-blocking stream of its own;
// - a corrupt segment gives nwc::error(corrupt), never a crash;
// - with NWC_CUDA_TEST_FILES=a.nwc:b.nwc (real models; NWC_CODEC_PATH for referenced codecs), every
//   tensor of each file decoded on the device by decompress_tensors_to_device (ecsq/tcq tensors in
//   batches of up to 2^27 weights, and of 2^20 so that a file takes several batches):
//   ecsq/tcq/rtn/gptq/raw/lossless bit-identical to the CPU decoder, nwc within the tolerance above.
//
// Exit codes: 0 passed, 1 failed, 77 skipped (no CUDA device or driver; ctest's SKIP_RETURN_CODE).
#define EIGEN_NO_CUDA  // Eigen is host-only here (see cuda/decompress.cuh)

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "nwc/codec/codec_model.hpp"
#include "nwc/core/random.hpp"
#include "nwc/cuda/context_rans_decode.cuh"
#include "nwc/cuda/decompress.cuh"
#include "nwc/cuda/device.cuh"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"
#include "nwc/quant/trellis.hpp"

namespace {

constexpr int exit_skipped = 77;
int failures = 0;

/// What Codec<backend::scalar>::compress writes for an nwc tensor, without the whole pipeline
/// (whose model-file headers are not needed here).
nwc::ContainerTensor encode_nwc(const nwc::Tensor<float>& weights, const nwc::Tensor<double>* hessian, const nwc::MethodOptions& options,
                                const nwc::NeuralCodec& codec) {
    nwc::EncodedMatrix encoded = nwc::NwcMethod::encode(weights.view(), hessian, options, nwc::MethodResources{std::shared_ptr<const nwc::NeuralCodec>(std::shared_ptr<void>(), &codec)});
    nwc::ContainerTensor tensor = std::move(encoded.tensor);
    tensor.name = "w";
    tensor.shape = weights.shape();
    tensor.codec_index = 0;
    return tensor;
}

/// A one-tensor container with the codec's decoder half.
std::vector<std::uint8_t> container_of(nwc::ContainerTensor tensor, const nwc::NeuralCodec& codec) {
    nwc::ContainerWriter writer;
    writer.add_codec(nwc::serialize_codec_decoder(codec.decoder()));
    writer.add_tensor(std::move(tensor));
    return writer.serialize();
}

/// The CPU reference decode of tensor 0 (what Codec<Backend>::decompress runs).
template <class Backend>
nwc::Tensor<float> cpu_decode(const nwc::ContainerReader& reader) {
    nwc::Tensor<float> out(reader.entry(0).shape);
    nwc::DecodeResources resources(reader);
    nwc::detail::decode_plans<Backend>(reader, std::vector{nwc::detail::make_decode_plan(reader, 0, resources, nwc::BuiltinDecodings{})}, {&out}, 1, {},
                                       1);
    return out;
}

void expect(bool condition, const std::string& what) {
    if (condition) return;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
}

nwc::CdfTableSet random_tables(nwc::Random& random, int channels, int precision) {
    std::vector<nwc::CdfTable> tables;
    for (int channel = 0; channel < channels; ++channel) {
        std::vector<double> probabilities(std::size_t(2 + channel % 9));
        for (double& p : probabilities) p = 0.02 + random.uniform();
        tables.push_back(nwc::CdfTable::from_probabilities(-channel % 4, probabilities, 1e-3, precision));
    }
    return nwc::CdfTableSet(std::move(tables));
}

void check_rans() {
    nwc::Random random(1);
    for (const auto& [channels, precision] : {std::pair{16, 12}, std::pair{16, 16}, std::pair{3, 14}}) {
        const nwc::CdfTableSet tables = random_tables(random, channels, precision);
        // Segments of 1000 and 22000 symbols per channel: 1 to 32 lanes (rans::lane_count_for).
        for (std::size_t count : {std::size_t(channels), std::size_t(channels) * 7, std::size_t(channels) * 40011})
        for (std::uint32_t per_channel : {1000u, 22000u}) {
            std::vector<std::int32_t> symbols(count);
            for (auto& symbol : symbols) symbol = std::int32_t(std::lround(random.normal() * 2.5));
            symbols[count / 2] = 123456;  // escapes
            symbols[count - 1] = -99999;
            nwc::RangeCoderOptions options;
            options.segment_size = std::uint32_t(channels) * per_channel;
            const auto stream = nwc::rans::encode(symbols, tables, options);
            const auto cpu = nwc::rans::decode(stream, tables, nwc::backend::scalar{});
            const auto gpu = nwc::cuda::rans_decode(stream, tables);
            expect(cpu == symbols, "CPU rANS round trip");
            expect(gpu == cpu, "GPU rANS symbols == CPU (" + std::to_string(channels) + " channels, precision " + std::to_string(precision) +
                                   ", " + std::to_string(count) + " symbols, segments of " + std::to_string(options.segment_size) + ")");
            // A flipped word inside the first segment: an error, never a crash (the stream has no
            // CRC, so the GPU's own checks are what catches it).
            if (count > 1000) {
                auto corrupt = stream;
                const auto index = nwc::rans::read_index(stream, tables);
                corrupt[index.segments[0].words_offset + 10] ^= 0x5A;
                bool cpu_threw = false, gpu_threw = false;
                try {
                    (void)nwc::rans::decode(corrupt, tables, nwc::backend::scalar{});
                } catch (const nwc::error& e) {
                    cpu_threw = e.id() == nwc::errc::corrupt;
                }
                try {
                    (void)nwc::cuda::rans_decode(corrupt, tables);
                } catch (const nwc::error& e) {
                    gpu_threw = e.id() == nwc::errc::corrupt;
                }
                expect(gpu_threw == cpu_threw, "a corrupt segment: the GPU reports errc::corrupt exactly when the CPU does");
            }
        }
    }
}

/// Values a machine can code: each path walks its machine from state 0 at every segment start,
/// each value on its context's coset, a few far outside the tables (escapes).
std::vector<std::int32_t> machine_values(nwc::Random& random, const nwc::LaneStateMachine& machine, std::size_t count, std::uint32_t segment_size) {
    std::vector<std::int32_t> values(count);
    std::uint32_t states[nwc::context_rans::path_count] = {};
    for (std::size_t i = 0; i < count; ++i) {
        if (i % segment_size == 0) std::fill(std::begin(states), std::end(states), 0u);
        std::uint32_t& state = states[i % nwc::context_rans::path_count];
        const std::uint32_t context = machine.context(state);
        std::int32_t symbol = std::int32_t(std::lround(random.normal() * 3.0));
        if (i % 9973 == 4) symbol = (i % 2 ? 1 : -1) * std::int32_t(100000 + i % 7);
        values[i] = machine.value_stride() * symbol + machine.addend(context);
        state = machine.next(state, symbol);
    }
    return values;
}

/// A trellis-like machine with odd table offsets and another stride: what tcq does not use, but
/// the format allows.
nwc::LaneStateMachine odd_machine() {
    std::vector<std::uint16_t> contexts{0, 1, 2, 1, 0}, next{1, 2, 3, 4, 0, 2, 4, 1, 3, 0};
    return nwc::LaneStateMachine(std::move(contexts), std::move(next), 3, {0, 1, -7});
}

void check_context_rans() {
    nwc::Random random(11);
    const nwc::LaneStateMachine machines[] = {nwc::Trellis(8).lane_machine(), nwc::Trellis(256).lane_machine(), odd_machine()};
    for (const nwc::LaneStateMachine& machine : machines) {
        std::vector<nwc::CdfTable> tables;
        for (std::uint32_t c = 0; c < machine.context_count(); ++c) {
            std::vector<double> probabilities(std::size_t(5 + 2 * c));
            for (std::size_t k = 0; k < probabilities.size(); ++k) probabilities[k] = std::exp(-0.3 * std::abs(double(k) - 0.5 * double(probabilities.size())));
            tables.push_back(nwc::CdfTable::from_probabilities(-std::int32_t(probabilities.size() / 2) + std::int32_t(c), probabilities, 1e-3, 14));
        }
        const nwc::CdfTableSet set(std::move(tables));
        for (std::size_t count : {std::size_t(7), std::size_t(333), std::size_t(70000), std::size_t(300001)})
            for (std::uint32_t segment_size : {32u * 100u, 32u * 4096u}) {
                const std::vector<std::int32_t> values = machine_values(random, machine, count, segment_size);
                nwc::RangeCoderOptions options;
                options.segment_size = segment_size;
                options.checksum = true;
                const auto stream = nwc::context_rans::encode(values, set, machine, options);
                const auto cpu = nwc::context_rans::decode(stream, set, machine, nwc::backend::scalar{});
                const auto gpu = nwc::cuda::context_rans_decode(stream, set, machine);
                const std::string what = std::to_string(machine.state_count()) + " states, " + std::to_string(count) + " values, segments of " +
                                         std::to_string(segment_size);
                expect(cpu == values, "CPU context rANS round trip (" + what + ")");
                expect(gpu == cpu, "GPU context rANS values == CPU (" + what + ")");
                if (count < 70000) continue;
                // A flipped word (the CRC is not checked, so the GPU's own checks must catch it).
                auto corrupt = stream;
                const auto index = nwc::context_rans::read_index(stream, set, machine);
                corrupt[index.segments[0].words_offset + 10] ^= 0x5A;
                const std::size_t crc_at = corrupt.size() - 4;
                const std::uint32_t crc = nwc::crc32c(std::span<const std::uint8_t>(corrupt).first(crc_at));
                std::memcpy(corrupt.data() + crc_at, &crc, 4);
                bool cpu_threw = false, gpu_threw = false;
                try {
                    (void)nwc::context_rans::decode(corrupt, set, machine, nwc::backend::scalar{});
                } catch (const nwc::error& e) {
                    cpu_threw = e.id() == nwc::errc::corrupt;
                }
                try {
                    (void)nwc::cuda::context_rans_decode(corrupt, set, machine);
                } catch (const nwc::error& e) {
                    gpu_threw = e.id() == nwc::errc::corrupt;
                }
                expect(gpu_threw == cpu_threw, "a corrupt context segment: the GPU reports errc::corrupt exactly when the CPU does (" + what + ")");
            }
    }
}

template <class T>
std::vector<float> to_floats(const nwc::cuda::DeviceBuffer<T>& buffer) {
    const std::vector<T> host = buffer.to_host();
    std::vector<float> values(host.size());
    for (std::size_t k = 0; k < host.size(); ++k) values[k] = nwc::to_float(host[k]);
    return values;
}

std::size_t mismatches(const std::vector<float>& reference, const std::vector<float>& gpu, double tolerance) {
    if (reference.size() != gpu.size()) return reference.size() + 1;
    double sum = 0;
    for (float value : reference) sum += double(value) * value;
    const double floor = std::sqrt(sum / double(std::max<std::size_t>(reference.size(), 1)));
    std::size_t bad = 0;
    for (std::size_t k = 0; k < reference.size(); ++k)
        bad += !(std::abs(double(gpu[k]) - double(reference[k])) <= tolerance * (std::abs(double(reference[k])) + floor));
    return bad;
}

void check_decompress() {
    nwc::CodecModel model(nwc::CodecArchitecture{16, 64, 2, 16, 4});
    model.initialize(nwc::Random(5));
    const auto codec = std::make_shared<const nwc::NeuralCodec>(model.freeze(nwc::dtype::f16, 14));
    nwc::Random random(6);
    nwc::Tensor<float> weights(nwc::Shape{300, 70});  // 300 rows: a padded last chunk per column
    for (float& value : weights.values()) value = float(random.normal() * 0.03);
    weights.values()[17] = 2.0f;  // an outlier: escapes
    nwc::Tensor<double> hessian(nwc::Shape{70, 70});
    for (std::int64_t i = 0; i < 70; ++i)
        for (std::int64_t j = 0; j < 70; ++j) hessian.view()(i, j) = i == j ? 1.0 + double(i % 13) : 0.01;
    nwc::cuda::GpuDecodeContext context;
    for (nwc::NormalizationAxis axis : {nwc::NormalizationAxis::per_column, nwc::NormalizationAxis::per_row})
        for (const nwc::Tensor<double>* h : {static_cast<const nwc::Tensor<double>*>(nullptr), static_cast<const nwc::Tensor<double>*>(&hessian)}) {
            nwc::MethodOptions options;
            options.method = "nwc";
            options.axis = axis;
            options.alpha = 1.3f;
            options.weights_per_segment = 4096;
            options.measure = false;
            const auto reader = nwc::ContainerReader::from_bytes(container_of(encode_nwc(weights, h, options, *codec), *codec));
            const nwc::Tensor<float> cpu = cpu_decode<nwc::backend::scalar>(reader);
            const std::string what = std::string(axis == nwc::NormalizationAxis::per_column ? "per column" : "per row") + (h ? ", levels" : "");
            expect(mismatches(cpu.values(), to_floats(nwc::cuda::decompress_to_device<float>(reader, 0, context)), 1e-4) == 0,
                   "float output within 1e-4 (" + what + ")");
            // fp16 / bf16 outputs: the CPU's values rounded by the same conversion, within 1e-4 plus one ulp of the format.
            std::vector<float> cpu_half(cpu.values().size()), cpu_bf16(cpu.values().size());
            for (std::size_t k = 0; k < cpu_half.size(); ++k) {
                cpu_half[k] = nwc::to_float(nwc::to_half(cpu.values()[k]));
                cpu_bf16[k] = nwc::to_float(nwc::to_bfloat16(cpu.values()[k]));
            }
            expect(mismatches(cpu_half, to_floats(nwc::cuda::decompress_to_device<nwc::half>(reader, 0, context)), 1e-3) == 0,
                   "half output (" + what + ")");
            expect(mismatches(cpu_bf16, to_floats(nwc::cuda::decompress_to_device<nwc::bfloat16>(reader, 0, context)), 8e-3) == 0,
                   "bfloat16 output (" + what + ")");
        }
}

/// A one-tensor container of an ecsq or tcq tensor (no codec).
template <class Method>
std::vector<std::uint8_t> grid_container(const nwc::Tensor<float>& weights, const nwc::Tensor<double>* hessian, const nwc::MethodOptions& options) {
    nwc::EncodedMatrix encoded = Method::encode(weights.view(), hessian, options, nwc::MethodResources{});
    nwc::ContainerTensor tensor = std::move(encoded.tensor);
    tensor.name = "w";
    tensor.shape = weights.shape();
    nwc::ContainerWriter writer;
    writer.add_tensor(std::move(tensor));
    return writer.serialize();
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// ecsq and tcq tensors: the device's output is the CPU decoder's, bit for bit.
void check_grid_methods() {
    nwc::Random random(7);
    // A context on the legacy default stream, and one on a stream of its own that does not
    // synchronize with it (the decoder must order its copies and kernels on the context's stream).
    cudaStream_t own_stream = nullptr;
    NWC_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream, cudaStreamNonBlocking));
    struct StreamGuard {
        cudaStream_t stream;
        ~StreamGuard() { (void)cudaStreamDestroy(stream); }
    } guard{own_stream};
    nwc::cuda::GpuDecodeContext default_context, own_context(own_stream);
    for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{300, 70}, {64, 96}, {40, 1000}}) {
        nwc::Tensor<float> weights(nwc::Shape{rows, cols});
        for (float& value : weights.values()) value = float(random.normal() * 0.02);
        weights.values()[5] = 1.5f;  // an outlier: escapes
        nwc::Tensor<double> hessian(nwc::Shape{cols, cols});
        for (std::int64_t i = 0; i < cols; ++i)
            for (std::int64_t j = 0; j < cols; ++j) hessian.view()(i, j) = i == j ? 1.0 + double(i % 11) : 0.02;
        for (const std::string method : {"ecsq", "tcq"})
            for (nwc::NormalizationAxis axis : {nwc::NormalizationAxis::per_column, nwc::NormalizationAxis::per_row, nwc::NormalizationAxis::per_tensor})
                for (const nwc::Tensor<double>* h : {static_cast<const nwc::Tensor<double>*>(nullptr), static_cast<const nwc::Tensor<double>*>(&hessian)}) {
                    nwc::MethodOptions options;
                    options.method = method;
                    options.axis = axis;
                    options.step = 0.3f;
                    options.tcq_step = 0.15f;
                    options.tcq_states = cols == 96 ? 256 : 8;
                    options.weights_per_segment = 4096;  // several segments
                    options.measure = false;
                    options.threads = 1;
                    const auto bytes = method == "ecsq" ? grid_container<nwc::EcsqMethod>(weights, h, options)
                                                        : grid_container<nwc::TcqMethod>(weights, h, options);
                    const auto reader = nwc::ContainerReader::from_bytes(bytes);
                    const nwc::Tensor<float> cpu = cpu_decode<nwc::backend::scalar>(reader);
                    nwc::cuda::GpuDecodeContext& context = h != nullptr ? own_context : default_context;
                    const std::string what = method + " " + std::to_string(rows) + " x " + std::to_string(cols) + ", axis " +
                                             std::to_string(int(axis)) + (h ? ", LDLQ" : "");
                    std::vector<nwc::half> cpu_half(cpu.values().size());
                    std::vector<nwc::bfloat16> cpu_bf16(cpu.values().size());
                    for (std::size_t k = 0; k < cpu_half.size(); ++k) {
                        cpu_half[k] = nwc::to_half(cpu.values()[k]);
                        cpu_bf16[k] = nwc::to_bfloat16(cpu.values()[k]);
                    }
                    const std::vector<float> cpu_float(cpu.values().begin(), cpu.values().end());
                    expect(same_bits(nwc::cuda::decompress_to_device<float>(reader, 0, context).to_host(), cpu_float), "float, bit-identical (" + what + ")");
                    expect(same_bits(nwc::cuda::decompress_to_device<nwc::half>(reader, 0, context).to_host(), cpu_half), "half, bit-identical (" + what + ")");
                    expect(same_bits(nwc::cuda::decompress_to_device<nwc::bfloat16>(reader, 0, context).to_host(), cpu_bf16),
                           "bfloat16, bit-identical (" + what + ")");
                    // A flipped byte in the last segment's stream: errc::corrupt (the payload's CRC), never a crash.
                    auto corrupt = bytes;
                    const auto last = reader.segment(0, reader.entry(0).segment_count() - 1);
                    corrupt[std::size_t(reader.entry(0).payload_offset) + std::size_t(last.data() - reader.payload(0).data()) + last.size() / 2] ^= 0x21;
                    bool threw = false;
                    try {
                        const auto bad = nwc::ContainerReader::from_bytes(corrupt);
                        (void)nwc::cuda::decompress_to_device<float>(bad, 0, context);
                    } catch (const nwc::error& e) {
                        threw = e.id() == nwc::errc::corrupt;
                    }
                    expect(threw, "a corrupt " + method + " segment gives errc::corrupt (" + what + ")");
                }
    }
}

/// Every tensor of each file in $NWC_CUDA_TEST_FILES (colon-separated) on the device against the CPU.
void check_files() {
    const char* list = std::getenv("NWC_CUDA_TEST_FILES");
    if (list == nullptr) return;
    std::string files = list;
    for (const std::uint64_t batch_weights : {std::uint64_t(1) << 27, std::uint64_t(1) << 20})
    for (std::size_t begin = 0; begin < files.size();) {
        const std::size_t end = std::min(files.find(':', begin), files.size());
        const std::string path = files.substr(begin, end - begin);
        begin = end + 1;
        const auto reader = nwc::ContainerReader::open(path);
        nwc::DecodeResources resources(reader);
        std::vector<std::size_t> tensors;
        for (std::size_t i = 0; i < reader.tensor_count(); ++i)
            if (!reader.entry(i).name.starts_with("__nwc__.")) tensors.push_back(i);  // not the pipeline's RoPE correction bits
        nwc::cuda::GpuDecodeContext context;
        const auto decoded = nwc::cuda::decompress_tensors_to_device<float>(reader, tensors, context, batch_weights);
        std::int64_t weights = 0;
        std::size_t exact = 0, close = 0;
        for (std::size_t k = 0; k < tensors.size(); ++k) {
            const std::size_t i = tensors[k];
            const auto& entry = reader.entry(i);
            nwc::Tensor<float> cpu(entry.shape);
            nwc::detail::decode_plans<nwc::backend::scalar>(reader, std::vector{nwc::detail::make_decode_plan(reader, i, resources, nwc::BuiltinDecodings{})},
                                                            {&cpu}, 1, {}, 1);
            const std::vector<float> reference(cpu.values().begin(), cpu.values().end());
            const std::vector<float> gpu = decoded[k].to_host();
            weights += entry.shape.numel();
            if (entry.method == "nwc") {
                expect(mismatches(reference, gpu, 1e-4) == 0, path + ": tensor '" + entry.name + "' (nwc) within 1e-4");
                ++close;
            } else {
                expect(same_bits(gpu, reference), path + ": tensor '" + entry.name + "' (" + entry.method + ") bit-identical");
                ++exact;
            }
        }
        std::printf("%s: %zu tensors, %lld weights on the device (%zu bit-identical, %zu nwc within 1e-4)\n", path.c_str(), tensors.size(),
                    static_cast<long long>(weights), exact, close);
    }
}

}  // namespace

int main() {
    // Needs no GPU: an architecture the kernels cannot take is refused with a reason.
    expect(static_cast<bool>(nwc::cuda::DeviceNeuralDecoder::can_implement(nwc::CodecArchitecture{})), "the paper's codec fits");
    if (!nwc::cuda::gpu_available()) {
        std::printf("no CUDA device: skipped\n");
        return failures == 0 ? exit_skipped : 1;
    }
    try {
        check_rans();
        check_context_rans();
        check_decompress();
        check_grid_methods();
        check_files();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAILED: exception %s\n", e.what());
        ++failures;
    }
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all CUDA decode checks passed\n");
    return 0;
}
