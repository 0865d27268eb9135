// Sensitivity-driven allocation (include/nwc/pipeline/allocation.hpp) through rate control, and the
// byte accounting of whole files (Codec::account): more bytes go to the tensors whose error costs
// the model more, the axis whose error pattern costs least wins, the target is met, the result
// does not depend on the thread count, and every byte of a file lands in exactly one category.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "nwc/core/random.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc_test_allocation {

using namespace nwc;

namespace {

/// Three 64 x 96 matrices of the same statistics (rows of very different scales in "c") and a vector.
ModelFile model_of_three() {
    ModelFile model;
    Random random(3);
    for (const std::string name : {"a.weight", "b.weight", "c.weight"}) {
        ModelTensor tensor{name, dtype::f32, Shape{64, 96}, Tensor<float>(Shape{64, 96}), {}};
        for (std::int64_t r = 0; r < 64; ++r) {
            const float row_scale = name == "c.weight" ? (r < 8 ? 8.0f : 0.25f) : 1.0f;
            for (std::int64_t c = 0; c < 96; ++c) tensor.values(r, c) = 0.02f * row_scale * float(random.normal());
        }
        model.tensors.push_back(std::move(tensor));
    }
    ModelTensor norm{"norm.weight", dtype::f32, Shape{96}, Tensor<float>(Shape{96}), {}};
    for (float& value : norm.values.values()) value = 1.0f + 0.1f * float(random.normal());
    model.tensors.push_back(std::move(norm));
    return model;
}

std::uint64_t stored_bytes(const CompressedModel& compressed, const std::string& name) {
    for (const TensorReport& tensor : compressed.report.tensors)
        if (tensor.name == name) return tensor.stored_bytes;
    FAIL("no tensor " << name);
    return 0;
}

MethodOptions ecsq_options(int threads = 1) {
    MethodOptions options;
    options.method = "ecsq";
    options.axis = NormalizationAxis::per_tensor;
    options.threads = threads;
    return options;
}

}  // namespace

TEST_CASE("allocation gives the bytes to the sensitive tensor and still meets the target", "[allocation]") {
    const ModelFile model = model_of_three();
    TensorSensitivities sensitivities;
    sensitivities.by_name["a.weight"] = {1000.0};
    sensitivities.by_name["b.weight"] = {10.0};
    sensitivities.by_name["c.weight"] = {10.0};
    RateTarget target;
    target.bits_per_weight = 4.0;
    const DefaultCodec codec(ecsq_options());
    const CompressedModel global = compress_to_target(codec, model, {}, target);
    target.sensitivities = &sensitivities;
    const CompressedModel allocated = compress_to_target(codec, model, {}, target);
    INFO(allocated.report.note);
    CHECK(allocated.report.target_met);
    CHECK(std::fabs(allocated.report.bits_per_weight() / 4.0 - 1.0) <= 0.01);
    // One step for all: a and b cost about the same; allocated: a (100x as sensitive) gets about
    // log2(100) / 2 = 3.3 bits per weight more than b. This fails if allocation is switched off.
    CHECK(double(stored_bytes(global, "a.weight")) / double(stored_bytes(global, "b.weight")) < 1.1);
    const double extra_bits = 8.0 * (double(stored_bytes(allocated, "a.weight")) - double(stored_bytes(allocated, "b.weight"))) / (64.0 * 96.0);
    CHECK(extra_bits > 2.5);
    CHECK(extra_bits < 4.5);
    CHECK(allocated.report.setting.find("(allocated)") != std::string::npos);
    // The predicted loss sum S D is lower than with one step for all.
    double loss_global = 0.0, loss_allocated = 0.0;
    for (std::size_t i = 0; i < 3; ++i) {
        const double s = sensitivities.by_name.at(model.tensors[i].name).uniform;
        loss_global += s * global.report.tensors[i].squared_error / (64.0 * 96.0);
        loss_allocated += s * allocated.report.tensors[i].squared_error / (64.0 * 96.0);
    }
    CHECK(loss_allocated < 0.5 * loss_global);
    // The sensitivity is recorded in each coded tensor's diagnostics.
    const ContainerReader reader = ContainerReader::from_bytes(allocated.writer.serialize());
    CHECK(detail::stored_diagnostics(reader.metadata(0)).sensitivity == Approx(1000.0).epsilon(0.01));
    CHECK(std::isnan(detail::stored_diagnostics(reader.metadata(3)).sensitivity));  // the vector was not allocated
    // Same bytes for any thread count.
    CHECK(compress_to_target(DefaultCodec(ecsq_options(2)), model, {}, target).writer.serialize() == allocated.writer.serialize());
}

TEST_CASE("allocation chooses the normalization axis whose error pattern costs least", "[allocation]") {
    const ModelFile model = model_of_three();
    TensorSensitivities sensitivities;
    sensitivities.by_name["a.weight"] = {10.0, 10.0, 10.0};
    sensitivities.by_name["b.weight"] = {10.0, 10.0, 10.0};
    // c's large rows hurt the model little per unit of error: error proportional to the row scale
    // (per-row normalization) is what it prefers.
    sensitivities.by_name["c.weight"] = {100.0, 1.0, 100.0};
    RateTarget target;
    target.bits_per_weight = 4.0;
    target.sensitivities = &sensitivities;
    const CompressedModel allocated = compress_to_target(DefaultCodec(ecsq_options()), model, {}, target);
    REQUIRE(allocated.report.tensor_settings.size() == 4);
    REQUIRE(allocated.report.tensor_settings[2].axis.has_value());
    CHECK(*allocated.report.tensor_settings[2].axis == NormalizationAxis::per_row);
    // Equal shaped sensitivities: one scale per tensor, the least MSE and the fewest scale bytes.
    CHECK(*allocated.report.tensor_settings[0].axis == NormalizationAxis::per_tensor);
    // The file decodes (each tensor with its own axis).
    const ModelFile decoded = DefaultCodec::decompress_model(ContainerReader::from_bytes(allocated.writer.serialize()));
    CHECK(decoded.tensors.size() == 4);
}

TEST_CASE("integer knobs are allocated exactly", "[allocation]") {
    const ModelFile model = model_of_three();
    TensorSensitivities sensitivities;
    sensitivities.by_name["a.weight"] = {1000.0};
    sensitivities.by_name["b.weight"] = {1.0};
    sensitivities.by_name["c.weight"] = {1.0};
    MethodOptions options;
    options.method = "rtn";
    RateTarget target;
    target.bits_per_weight = 4.5;
    target.sensitivities = &sensitivities;
    const CompressedModel allocated = compress_to_target(DefaultCodec(options), model, {}, target);
    CHECK(allocated.report.bits_per_weight() <= 4.5 * 1.0001);
    CHECK(allocated.report.tensor_settings[0].knob > allocated.report.tensor_settings[1].knob);
}

TEST_CASE("the byte account of a file sums to its size, payload apart from side information", "[allocation]") {
    const ModelFile model = model_of_three();
    for (const std::string method : {"ecsq", "rtn", "gptq"}) {
        INFO(method);
        MethodOptions options = ecsq_options();
        options.method = method;
        const std::vector<std::uint8_t> bytes = DefaultCodec(options).compress_model(model).writer.serialize();
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        const DefaultCodec::FileAccount account = DefaultCodec::account(reader);
        CHECK(account.total.total() == bytes.size());
        CHECK(account.total.of("payload") > 0);
        CHECK(account.total.of("directory") > 0);
        CHECK(account.total.of("header") > 0);
        CHECK(account.total.of("passthrough") == 0);  // the vector is coded too
        CHECK(account.total.side_information() < account.total.of("payload"));
        std::uint64_t tensors = 0;
        for (const ByteAccount& tensor : account.tensors) tensors += tensor.total();
        const ContainerAccounting parts = reader.accounting();
        CHECK(tensors == bytes.size() - parts.header_footer - parts.directory - parts.padding - parts.codec_blobs);
        if (method == "ecsq") CHECK(account.total.of("tables") > 0);
        // 3 groups of 32 per row, a grid code of 1-7 bits each, against 2 bytes each in fp16
        if (method == "rtn") CHECK((account.total.of("scales") >= 3 * 64 * 3 / 8 && account.total.of("scales") < 3 * 64 * 3 * 2 / 2));
    }
}

}  // namespace nwc_test_allocation
