// Fuzzes every built-in method's decoding without the container around it: Method::parse on the
// metadata, then decode_segment of every segment with the scalar and the SIMD backend. In
// fuzz_container most mutations land in the directory and the container's structure; here every
// mutated byte is a method's metadata, segment bounds or payload (tcq's union tables and context
// streams, lossless planes, ecsq/rtn/gptq fields), and the shape and segmentation are free.
// Input: u8 method (index into the methods that need no codec blob, modulo their count), u16 rows,
// u16 cols (each 1..256), u8 segment count S (1..8), S - 1 u16 segment sizes (the last segment
// takes the rest), u16 metadata size, the metadata, the payload.
// Invariant on success: the scalar and the SIMD decoders give the same bits.
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/io/container.hpp"
#include "nwc/pipeline/builtin_decodings.hpp"

namespace {

// The methods fuzzed here, as a list of names in BuiltinDecodings order (nwc needs a codec blob):
// only the decoding halves are compiled, as in a decoding-only program.
std::vector<std::string> fuzzed_methods() {
    std::vector<std::string> names;
    [&]<class... Methods>(nwc::MethodList<Methods...>) {
        ((nwc::uses_codec_blob<Methods> ? void() : names.push_back(std::string(Methods::name))), ...);
    }(nwc::BuiltinDecodings{});
    return names;
}

const nwc::ContainerReader& empty_container() {
    static const std::vector<std::uint8_t> bytes = nwc::ContainerWriter().serialize();
    static const nwc::ContainerReader reader = nwc::ContainerReader::from_bytes(bytes);
    return reader;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    static const std::vector<std::string> methods = fuzzed_methods();
    nwc::fuzz::rejects_cleanly([&] {
        ByteReader in(std::span<const std::uint8_t>(data, size), "fuzz");
        ContainerEntry entry;
        entry.name = "w";
        entry.method = methods[in.get_u8() % methods.size()];
        const std::int64_t rows = 1 + in.get_u16() % 256, cols = 1 + in.get_u16() % 256;
        entry.shape = Shape{rows, cols};
        const std::size_t segments = 1 + in.get_u8() % 8;
        std::vector<std::uint64_t> sizes;
        for (std::size_t k = 0; k + 1 < segments; ++k) sizes.push_back(in.get_u16());
        const std::span<const std::uint8_t> metadata = in.get_bytes(in.get_u16());
        const std::span<const std::uint8_t> payload = in.get_bytes(in.remaining());
        entry.metadata_size = metadata.size();
        entry.payload_size = payload.size();
        entry.segment_bounds = {0};
        for (const std::uint64_t bytes : sizes) entry.segment_bounds.push_back(std::min<std::uint64_t>(payload.size(), entry.segment_bounds.back() + bytes));
        entry.segment_bounds.push_back(payload.size());

        DecodeResources resources(empty_container());
        BuiltinDecodings::visit(entry.method, [&]<class M>(std::type_identity<M>) {
            const typename M::Layout layout = M::parse(entry, metadata, resources, "fuzz");
            NWC_FUZZ_CHECK(layout.segment_count() == entry.segment_count());
            Tensor<float> scalar(entry.shape), simd(entry.shape);
            for (std::size_t k = 0; k < entry.segment_count(); ++k) {
                const std::span<const std::uint8_t> segment =
                    payload.subspan(std::size_t(entry.segment_bounds[k]), std::size_t(entry.segment_bounds[k + 1] - entry.segment_bounds[k]));
                const bool scalar_ok = nwc::fuzz::rejects_cleanly([&] { M::decode_segment(layout, k, segment, scalar.view(), "fuzz", backend::scalar{}); });
                const bool simd_ok = nwc::fuzz::rejects_cleanly([&] { M::decode_segment(layout, k, segment, simd.view(), "fuzz", backend::simd{}); });
                NWC_FUZZ_CHECK(scalar_ok == simd_ok);
                if (!scalar_ok) return;
            }
            NWC_FUZZ_CHECK(std::memcmp(scalar.data(), simd.data(), sizeof(float) * std::size_t(scalar.numel())) == 0);
        });
    });
    return 0;
}
