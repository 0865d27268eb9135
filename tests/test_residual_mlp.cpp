// ResidualMLP: shapes, training path vs finite differences, inference path == training path,
// level modulation, thread-count independence.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "nwc/nn/residual_mlp.hpp"
#include "nwc/nn/residual_mlp_tape.hpp"

namespace nwc_test_residual_mlp {

using namespace nwc;
using autograd::Tape;
using autograd::Var;

namespace {

template <class Scalar>
RowMajorMatrix<Scalar> random_matrix(Eigen::Index rows, Eigen::Index cols, Random& random, float scale = 1.0f) {
    RowMajorMatrix<Scalar> matrix(rows, cols);
    for (Eigen::Index i = 0; i < matrix.size(); ++i) matrix.data()[i] = Scalar(random.normal() * scale);
    return matrix;
}

// Moves LayerNorm affine parameters and the embedding away from their identity initialization so
// that every gradient path is exercised.
template <class Scalar>
void perturb(ResidualMLP<Scalar>& model, Random& random) {
    for (auto* parameter : model.parameters()) {
        const bool affine = parameter->name.find("norm") != std::string::npos || parameter->name == "level_embedding";
        if (!affine) continue;
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i)
            parameter->value.data()[i] += Scalar(0.3f * random.normal());
    }
}

std::vector<std::uint8_t> random_levels(std::int64_t rows, int levels, Random& random) {
    std::vector<std::uint8_t> result(static_cast<std::size_t>(rows));
    for (auto& level : result) level = std::uint8_t(random.below(std::uint64_t(levels)));
    return result;
}

}  // namespace

TEST_CASE("ResidualMLP: parameter count, FLOPs and parameter order", "[residual_mlp]") {
    const ResidualMLPShape paper{16, 512, 4, 16, 4};
    CHECK(paper.parameter_count() == 16 * 512 + 512 + 4 * (512 * 512 + 3 * 512) + 4 * 512 + 16 * 512 + 16);
    CHECK(paper.gemm_flops_per_row() == 2.0 * (16 * 512 + 4 * 512 * 512 + 512 * 16));
    ResidualMLP<float> model(ResidualMLPShape{16, 32, 2, 8, 4});
    std::int64_t total = 0;
    for (const auto* parameter : std::as_const(model).parameters()) total += parameter->size();
    CHECK(total == model.shape().parameter_count());
    CHECK(model.parameters().front()->name == "input.weight");
    CHECK(model.parameters().back()->name == "output.bias");
    CHECK_THROWS_AS(ResidualMLP<float>(ResidualMLPShape{16, 0, 2, 8, 4}), nwc::error);
}

TEST_CASE("ResidualMLP: training-path gradients match finite differences", "[residual_mlp]") {
    Random random(11);
    ResidualMLP<double> model(ResidualMLPShape{3, 6, 2, 2, 3});
    model.initialize(random);
    perturb(model, random);
    const auto input = random_matrix<double>(5, 3, random);
    const auto weights = random_matrix<double>(5, 2, random);
    const auto levels = random_levels(5, 3, random);

    Tape<double> tape;
    auto loss_of = [&](const RowMajorMatrix<double>& x) {
        tape.clear();
        const Var out = nn::forward(tape, model, tape.constant(x), levels);
        return (tape.value(out).array() * weights.array()).sum();
    };
    tape.clear();
    const Var x = tape.variable(input);
    const Var out = nn::forward(tape, model, x, levels);
    for (auto* parameter : model.parameters()) parameter->zero_grad();
    tape.backward(out, weights);
    const RowMajorMatrix<double> input_grad = tape.grad(x);

    const double step = 1e-6;
    for (auto* parameter : model.parameters()) {
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            const double saved = parameter->value.data()[i];
            parameter->value.data()[i] = saved + step;
            const double plus = loss_of(input);
            parameter->value.data()[i] = saved - step;
            const double minus = loss_of(input);
            parameter->value.data()[i] = saved;
            const double numeric = (plus - minus) / (2 * step);
            INFO(parameter->name << "[" << i << "]");
            CHECK(parameter->grad.data()[i] == Approx(numeric).margin(1e-6).epsilon(1e-5));
        }
    }
    for (Eigen::Index i = 0; i < input.size(); ++i) {
        RowMajorMatrix<double> shifted = input;
        shifted.data()[i] += step;
        const double plus = loss_of(shifted);
        shifted.data()[i] -= 2 * step;
        const double minus = loss_of(shifted);
        CHECK(input_grad.data()[i] == Approx((plus - minus) / (2 * step)).margin(1e-6).epsilon(1e-5));
    }
}

TEMPLATE_TEST_CASE("ResidualMLP: inference path equals the training path", "[residual_mlp]", backend::scalar,
                   backend::simd) {
    Random random(5);
    for (const ResidualMLPShape shape : {ResidualMLPShape{16, 64, 2, 16, 4}, ResidualMLPShape{16, 512, 4, 16, 4},
                                         ResidualMLPShape{16, 32, 1, 8, 4}, ResidualMLPShape{8, 24, 0, 16, 4}}) {
        ResidualMLP<float> model(shape);
        model.initialize(random);
        perturb(model, random);
        const std::int64_t rows = 2100;  // several full tiles and a partial one for every width
        const auto input = random_matrix<float>(rows, shape.input, random);
        const auto levels = random_levels(rows, shape.levels, random);

        Tape<float> tape;
        const Var out = nn::forward(tape, model, tape.constant_ref(input), levels);
        const RowMajorMatrix<float> expected = tape.value(out);

        RowMajorMatrix<float> actual(rows, shape.output);
        model.infer(TensorView<const float>(input.data(), {rows, shape.input}), levels,
                    TensorView<float>(actual.data(), {rows, shape.output}), 1, TestType{});
        INFO("width " << shape.width << " blocks " << shape.blocks);
        const float scale = std::max(1.0f, expected.cwiseAbs().maxCoeff());
        CHECK((actual - expected).cwiseAbs().maxCoeff() <= 1e-5f * scale);

        RowMajorMatrix<float> threaded(rows, shape.output);
        model.infer(TensorView<const float>(input.data(), {rows, shape.input}), levels,
                    TensorView<float>(threaded.data(), {rows, shape.output}), 2, TestType{});
        CHECK(threaded == actual);
    }
}

TEST_CASE("ResidualMLP: the level embedding modulates each row by its own level", "[residual_mlp]") {
    Random random(3);
    const ResidualMLPShape shape{16, 32, 2, 16, 4};
    ResidualMLP<float> model(shape);
    model.initialize(random);
    // Zeroing E[2] zeroes the hidden state of every level-2 row after the last block, so those
    // rows decode to the output bias; other levels are untouched.
    auto* embedding = model.parameters()[2 + 4 * shape.blocks];
    REQUIRE(embedding->name == "level_embedding");
    const auto input = random_matrix<float>(8, 16, random);
    const std::vector<std::uint8_t> levels{0, 1, 2, 3, 2, 0, 1, 2};
    RowMajorMatrix<float> before(8, 16), after(8, 16);
    model.infer(TensorView<const float>(input.data(), {8, 16}), levels, TensorView<float>(before.data(), {8, 16}));
    embedding->value.row(2).setZero();
    model.infer(TensorView<const float>(input.data(), {8, 16}), levels, TensorView<float>(after.data(), {8, 16}));
    const auto& output_bias = model.parameters().back()->value;
    for (int row = 0; row < 8; ++row) {
        if (levels[std::size_t(row)] == 2)
            CHECK((after.row(row) - output_bias).cwiseAbs().maxCoeff() == 0.0f);
        else
            CHECK(after.row(row) == before.row(row));
    }
    // Identical embeddings make the level irrelevant; distinct ones make it matter.
    const std::vector<std::uint8_t> zeros(8, 0), threes(8, 3);
    RowMajorMatrix<float> at_zero(8, 16), at_three(8, 16);
    embedding->value.row(3) = embedding->value.row(0) * 1.5f;
    model.infer(TensorView<const float>(input.data(), {8, 16}), zeros, TensorView<float>(at_zero.data(), {8, 16}));
    model.infer(TensorView<const float>(input.data(), {8, 16}), threes, TensorView<float>(at_three.data(), {8, 16}));
    CHECK((at_zero - at_three).cwiseAbs().maxCoeff() > 1e-3f);
    // A level beyond the embedding is bad input, not a crash.
    const std::vector<std::uint8_t> bad(8, 4);
    CHECK_THROWS_AS(model.infer(TensorView<const float>(input.data(), {8, 16}), bad,
                                TensorView<float>(at_zero.data(), {8, 16})),
                    nwc::error);
}

}  // namespace nwc_test_residual_mlp
