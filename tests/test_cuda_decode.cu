// The CUDA decoder against the CPU reference:
// - rANS on the GPU (one warp per segment) gives exactly the CPU's symbols, escapes, partial last
//   steps and several segments included, for table sets that fit shared memory and one that does not;
// - decompress_to_device<float / half / bfloat16> of nwc tensors agrees with the CPU decoder (scalar)
//   within 1e-4 relative (|gpu - cpu| <= 1e-4 (|cpu| + rms(cpu)); cuBLAS sums in another order),
//   for per-column and per-row scales, with and without importance levels;
// - a corrupt segment gives nwc::error(corrupt), never a crash.
//
// Exit codes: 0 passed, 1 failed, 77 skipped (no CUDA device or driver; ctest's SKIP_RETURN_CODE).
#define EIGEN_NO_CUDA  // Eigen is host-only here (see cuda/decompress.cuh)

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "nwc/codec/codec_model.hpp"
#include "nwc/core/random.hpp"
#include "nwc/cuda/decompress.cuh"
#include "nwc/cuda/device.cuh"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"

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
    nwc::detail::decode_plans<Backend>(reader, std::vector{nwc::detail::make_decode_plan(reader, 0, resources, nwc::BuiltinMethods{})}, {&out}, 1, {},
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
        check_decompress();
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
