// Autograd: every op against central finite differences in double precision, broadcasting,
// composed graphs, gradient accumulation, tape reuse, and the optimizers.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nwc/autograd/autograd.hpp"
#include "nwc/core/random.hpp"

namespace nwc_test_autograd {

using namespace nwc;
using namespace nwc::autograd;
using Matrix = RowMajorMatrix<double>;
using Builder = std::function<Var(Tape<double>&, const std::vector<Var>&)>;

namespace {

Matrix random_matrix(Random& random, Index rows, Index cols, double low = -2.0, double high = 2.0) {
    Matrix matrix(rows, cols);
    for (Index i = 0; i < matrix.size(); ++i) matrix.data()[i] = random.uniform(float(low), float(high));
    return matrix;
}

/// Random values with |v| in [margin, limit]: keeps kinks (relu, abs, clamp) out of a
/// finite-difference step's reach.
Matrix away_from_zero(Random& random, Index rows, Index cols, double margin = 0.05, double limit = 2.0) {
    Matrix matrix(rows, cols);
    for (Index i = 0; i < matrix.size(); ++i) {
        const double magnitude = random.uniform(float(margin), float(limit));
        matrix.data()[i] = random.uniform() < 0.5f ? -magnitude : magnitude;
    }
    return matrix;
}

Index random_size(Random& random, Index low, Index high) { return low + Index(random.below(std::uint64_t(high - low + 1))); }

/// The worst disagreement between the gradients that `build` gives its inputs and central
/// differences of L = sum(R .* output) with a random weight R (so any output shape is checked),
/// as |analytic - numeric| / (1 + |numeric|), and where it occurred. Every evaluation records on
/// the same tape, which also exercises clear() and buffer reuse.
std::pair<double, std::string> gradient_error(const std::vector<Matrix>& inputs, const Builder& build,
                                              std::uint64_t seed, double step = 1e-6) {
    std::vector<Parameter<double>> parameters;
    parameters.reserve(inputs.size());
    for (const Matrix& input : inputs) parameters.emplace_back(input);
    Tape<double> tape;
    auto record = [&] {
        tape.clear();
        std::vector<Var> leaves;
        for (auto& parameter : parameters) leaves.push_back(tape.parameter(parameter));
        return build(tape, leaves);
    };
    Random random(seed);
    const Var output = record();
    const Matrix weights = random_matrix(random, tape.rows(output), tape.cols(output), -1.0, 1.0);
    for (auto& parameter : parameters) parameter.zero_grad();
    tape.backward(output, weights);
    std::vector<Matrix> analytic;
    for (auto& parameter : parameters) analytic.push_back(parameter.grad);
    auto objective = [&] { return tape.value(record()).cwiseProduct(weights).sum(); };
    double worst = 0.0;
    std::string where = "no element";
    for (std::size_t p = 0; p < parameters.size(); ++p) {
        Matrix& value = parameters[p].value;
        for (Index k = 0; k < value.size(); ++k) {
            const double saved = value.data()[k];
            value.data()[k] = saved + step;
            const double plus = objective();
            value.data()[k] = saved - step;
            const double minus = objective();
            value.data()[k] = saved;
            const double numeric = (plus - minus) / (2.0 * step);
            const double exact = analytic[p].data()[k];
            const double error = std::abs(exact - numeric) / (1.0 + std::abs(numeric));
            if (!(error <= worst)) {  // also catches NaN
                worst = std::isnan(error) ? HUGE_VAL : error;
                where = "input " + std::to_string(p) + " (" + std::to_string(value.rows()) + " x " +
                        std::to_string(value.cols()) + ") element " + std::to_string(k) + ": analytic " +
                        std::to_string(exact) + ", numeric " + std::to_string(numeric);
            }
        }
    }
    return {worst, where};
}

void check_gradients(const std::vector<Matrix>& inputs, const Builder& build, std::uint64_t seed,
                     double tolerance = 1e-6) {
    const auto [error, where] = gradient_error(inputs, build, seed);
    INFO(where);
    REQUIRE(error <= tolerance);
}

/// Runs `check` for a few random shapes.
template <class Check>
void for_random_shapes(std::uint64_t seed, int trials, Check check) {
    Random random(seed);
    for (int trial = 0; trial < trials; ++trial) {
        const Index rows = random_size(random, 1, 5), cols = random_size(random, 1, 6);
        INFO("trial " << trial << ": " << rows << " x " << cols);
        check(random, rows, cols);
    }
}

using UnaryOp = Var (*)(Tape<double>&, Var);

}  // namespace

TEST_CASE("autograd: the gradient checker catches a wrong backward", "[autograd]") {
    // y = x^3 with a backward of 2 x^2 dy instead of 3 x^2 dy.
    const Builder wrong_cube = [](Tape<double>& t, const std::vector<Var>& v) {
        return custom(t, {v[0]}, Matrix(t.value(v[0]).array().cube()), [](Tape<double>& tape, Node<double>& node) {
            tape.grad(node.inputs[0]).array() += 2.0 * tape.value(node.inputs[0]).array().square() * node.grad.array();
        });
    };
    Random random(24);
    CHECK(gradient_error({random_matrix(random, 3, 4, 0.5, 2.0)}, wrong_cube, 1).first > 0.1);
}

TEST_CASE("autograd: matrix products and linear", "[autograd][linear]") {
    for_random_shapes(1, 4, [](Random& random, Index m, Index k) {
        const Index n = random_size(random, 1, 5);
        check_gradients({random_matrix(random, m, k), random_matrix(random, k, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return matmul(t, v[0], v[1]); }, 11);
        check_gradients({random_matrix(random, m, k), random_matrix(random, n, k)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return matmul_nt(t, v[0], v[1]); }, 12);
        check_gradients({random_matrix(random, k, m), random_matrix(random, k, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return matmul_tn(t, v[0], v[1]); }, 13);
        check_gradients({random_matrix(random, m, k), random_matrix(random, n, k), random_matrix(random, 1, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return linear(t, v[0], v[1], v[2]); }, 14);
        check_gradients({random_matrix(random, m, k), random_matrix(random, n, k)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return linear(t, v[0], v[1]); }, 15);
        // The same operand on both sides: gradients from the two uses add up.
        check_gradients({random_matrix(random, m, k)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return matmul_nt(t, v[0], v[0]); }, 16);
    });
}

TEST_CASE("autograd: linear matches x W^T + b", "[autograd][linear]") {
    Random random(2);
    const Matrix x = random_matrix(random, 4, 3), weight = random_matrix(random, 5, 3), bias = random_matrix(random, 1, 5);
    Tape<double> tape;
    const Var y = linear(tape, tape.constant(x), tape.constant(weight), tape.constant(bias));
    const Matrix expected = (x * weight.transpose()).rowwise() + bias.row(0);
    CHECK(tape.value(y).isApprox(expected, 1e-14));
}

TEST_CASE("autograd: broadcasting add, sub, mul, div", "[autograd][elementwise]") {
    using BinaryOp = Var (*)(Tape<double>&, Var, Var);
    const BinaryOp operations[] = {&add<double>, &sub<double>, &mul<double>, &div<double>};
    for_random_shapes(3, 3, [&](Random& random, Index m, Index n) {
        // Every pairing of {full, 1 x n row, m x 1 column, 1 x 1} on either side.
        const std::pair<Index, Index> shapes[] = {{m, n}, {1, n}, {m, 1}, {1, 1}};
        for (std::size_t op = 0; op < 4; ++op)
            for (auto [rows_a, cols_a] : shapes)
                for (auto [rows_b, cols_b] : shapes) {
                    INFO("op " << op << ": " << rows_a << "x" << cols_a << " with " << rows_b << "x" << cols_b);
                    const Matrix b = op == 3 ? away_from_zero(random, rows_b, cols_b, 0.5) : random_matrix(random, rows_b, cols_b);
                    const BinaryOp operation = operations[op];
                    check_gradients({random_matrix(random, rows_a, cols_a), b},
                                    [operation](Tape<double>& t, const std::vector<Var>& v) { return operation(t, v[0], v[1]); },
                                    20 + op);
                }
    });
}

TEST_CASE("autograd: broadcast forward values", "[autograd][elementwise]") {
    Random random(4);
    const Matrix a = random_matrix(random, 3, 4), row = random_matrix(random, 1, 4), col = random_matrix(random, 3, 1);
    Tape<double> tape;
    const Var sum_row = add(tape, tape.constant(a), tape.constant(row));
    const Var product_col = mul(tape, tape.constant(col), tape.constant(a));
    const Var outer = sub(tape, tape.constant(row), tape.constant(col));
    CHECK(tape.value(sum_row).isApprox(Matrix(a.rowwise() + row.row(0)), 1e-15));
    CHECK(tape.value(product_col).isApprox(Matrix(a.array().colwise() * col.col(0).array()), 1e-15));
    REQUIRE(tape.rows(outer) == 3);
    REQUIRE(tape.cols(outer) == 4);
    CHECK(tape.value(outer)(2, 1) == Approx(row(0, 1) - col(2, 0)));
}

TEST_CASE("autograd: unary ops", "[autograd][elementwise]") {
    struct Case {
        const char* name;
        UnaryOp operation;
        int domain;  // 0: anywhere, 1: away from 0 (kinks), 2: positive
    };
    const Case cases[] = {
        {"relu", &relu<double>, 1},     {"silu", &silu<double>, 0},   {"gelu", &gelu<double>, 0},
        {"softplus", &softplus<double>, 0}, {"tanh", &nwc::autograd::tanh<double>, 0},
        {"sigmoid", &sigmoid<double>, 0}, {"exp", &nwc::autograd::exp<double>, 0},
        {"log", &nwc::autograd::log<double>, 2}, {"square", &square<double>, 0},
        {"sqrt", &nwc::autograd::sqrt<double>, 2}, {"abs", &nwc::autograd::abs<double>, 1}, {"neg", &neg<double>, 0},
    };
    for (const Case& c : cases) {
        INFO(c.name);
        for_random_shapes(5, 3, [&](Random& random, Index m, Index n) {
            Matrix x = c.domain == 0 ? random_matrix(random, m, n, -4.0, 4.0)
                       : c.domain == 1 ? away_from_zero(random, m, n)
                                       : random_matrix(random, m, n, 0.2, 3.0);
            const UnaryOp operation = c.operation;
            check_gradients({x}, [operation](Tape<double>& t, const std::vector<Var>& v) { return operation(t, v[0]); }, 30);
        });
    }
    for_random_shapes(6, 3, [](Random& random, Index m, Index n) {
        check_gradients({random_matrix(random, m, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return scale(t, v[0], -1.7); }, 31);
        check_gradients({random_matrix(random, m, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return add_scalar(t, v[0], 0.3); }, 32);
        check_gradients({random_matrix(random, m, n, 0.2, 3.0)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return nwc::autograd::pow(t, v[0], 1.7); }, 33);
        check_gradients({random_matrix(random, m, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return nwc::autograd::pow(t, v[0], 3.0); }, 34);
    });
}

TEST_CASE("autograd: activation values", "[autograd][elementwise]") {
    Matrix x(1, 5);
    x << -30.0, -1.0, 0.0, 0.5, 40.0;
    Tape<double> tape;
    const Var input = tape.constant(x);
    const Matrix gelu_value = tape.value(gelu(tape, input));
    const Matrix softplus_value = tape.value(softplus(tape, input));
    const Matrix silu_value = tape.value(silu(tape, input));
    // GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    CHECK(gelu_value(0, 3) == Approx(0.5 * 0.5 * (1.0 + std::tanh(0.7978845608028654 * (0.5 + 0.044715 * 0.125)))).epsilon(1e-14));
    CHECK(gelu_value(0, 1) == Approx(-0.15880800939172324).epsilon(1e-12));
    CHECK(softplus_value(0, 4) == Approx(40.0).epsilon(1e-15));   // no overflow for large x
    CHECK(softplus_value(0, 0) == Approx(std::exp(-30.0)).epsilon(1e-9));
    CHECK(softplus_value(0, 2) == Approx(std::log(2.0)).epsilon(1e-15));
    CHECK(silu_value(0, 3) == Approx(0.5 / (1.0 + std::exp(-0.5))).epsilon(1e-15));
}

TEST_CASE("autograd: reductions and mse", "[autograd][reduce]") {
    using Reduction = Var (*)(Tape<double>&, Var);
    const Reduction reductions[] = {&sum<double>, &mean<double>, &row_sum<double>, &row_mean<double>, &col_sum<double>, &col_mean<double>};
    for_random_shapes(7, 3, [&](Random& random, Index m, Index n) {
        for (std::size_t r = 0; r < 6; ++r) {
            INFO("reduction " << r);
            const Reduction reduction = reductions[r];
            check_gradients({random_matrix(random, m, n)},
                            [reduction](Tape<double>& t, const std::vector<Var>& v) { return reduction(t, v[0]); }, 40);
        }
        check_gradients({random_matrix(random, m, n), random_matrix(random, m, n)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return mse_loss(t, v[0], v[1]); }, 41);
    });
    Matrix x(2, 3);
    x << 1, 2, 3, 4, 5, 6;
    Tape<double> tape;
    const Var input = tape.constant(x);
    CHECK(tape.item(sum(tape, input)) == 21.0);
    CHECK(tape.item(mean(tape, input)) == 3.5);
    CHECK(tape.value(row_mean(tape, input))(1, 0) == 5.0);
    CHECK(tape.value(col_sum(tape, input))(0, 2) == 9.0);
    CHECK(tape.item(mse_loss(tape, input, tape.constant(Matrix::Zero(2, 3)))) == Approx(91.0 / 6.0));
}

TEST_CASE("autograd: layer norm and RMS norm", "[autograd][norm]") {
    for_random_shapes(8, 4, [](Random& random, Index m, Index n) {
        n += 1;  // a single column normalizes to 0 and has a zero gradient; test real rows
        const Matrix x = random_matrix(random, m, n), gamma = random_matrix(random, 1, n), beta = random_matrix(random, 1, n);
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return layer_norm(t, v[0]); }, 50);
        check_gradients({x, gamma, beta},
                        [](Tape<double>& t, const std::vector<Var>& v) { return layer_norm(t, v[0], v[1], v[2]); }, 51);
        check_gradients({x, gamma}, [](Tape<double>& t, const std::vector<Var>& v) { return layer_norm(t, v[0], v[1]); }, 52);
        check_gradients({x, beta},
                        [](Tape<double>& t, const std::vector<Var>& v) { return layer_norm(t, v[0], Var{}, v[1]); }, 53);
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return rms_norm(t, v[0]); }, 54);
        check_gradients({x, gamma}, [](Tape<double>& t, const std::vector<Var>& v) { return rms_norm(t, v[0], v[1]); }, 55);
    });
    Matrix x(1, 4);
    x << 1, 2, 3, 6;
    Tape<double> tape;
    const Matrix normalized = tape.value(layer_norm(tape, tape.constant(x), Var{}, Var{}, 0.0));
    CHECK(normalized.mean() == Approx(0.0).margin(1e-15));
    CHECK(normalized.array().square().mean() == Approx(1.0).epsilon(1e-14));
    const Matrix rms = tape.value(rms_norm(tape, tape.constant(x), Var{}, 0.0));
    CHECK(rms(0, 3) == Approx(6.0 / std::sqrt(50.0 / 4.0)).epsilon(1e-14));
}

TEST_CASE("autograd: shape ops", "[autograd][shape]") {
    for_random_shapes(9, 4, [](Random& random, Index m, Index n) {
        const Matrix x = random_matrix(random, m, n);
        check_gradients({x}, [n, m](Tape<double>& t, const std::vector<Var>& v) { return reshape(t, v[0], n, m); }, 60);
        check_gradients({x}, [m, n](Tape<double>& t, const std::vector<Var>& v) { return reshape(t, v[0], 1, m * n); }, 61);
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return transpose(t, v[0]); }, 62);
        const Index row_begin = Index(random.below(std::uint64_t(m))), col_begin = Index(random.below(std::uint64_t(n)));
        const Index row_count = random_size(random, 1, m - row_begin), col_count = random_size(random, 1, n - col_begin);
        check_gradients({x}, [=](Tape<double>& t, const std::vector<Var>& v) { return slice_rows(t, v[0], row_begin, row_count); }, 63);
        check_gradients({x}, [=](Tape<double>& t, const std::vector<Var>& v) { return slice_cols(t, v[0], col_begin, col_count); }, 64);
        check_gradients({x, random_matrix(random, 2, n), x.topRows(1)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return concat_rows(t, {v[0], v[1], v[2]}); }, 65);
        check_gradients({x, random_matrix(random, m, 3)},
                        [](Tape<double>& t, const std::vector<Var>& v) { return concat_cols(t, {v[1], v[0], v[1]}); }, 66);
    });
    Matrix x(2, 3);
    x << 1, 2, 3, 4, 5, 6;
    Tape<double> tape;
    const Var input = tape.constant(x);
    CHECK(tape.value(reshape(tape, input, 3, 2))(1, 0) == 3.0);
    CHECK(tape.value(transpose(tape, input))(2, 1) == 6.0);
    CHECK(tape.value(slice_cols(tape, input, 1, 2))(1, 1) == 6.0);
    CHECK(tape.value(concat_cols(tape, {input, input}))(1, 4) == 5.0);
}

TEST_CASE("autograd: gather rows scatter-adds", "[autograd][shape]") {
    Random random(10);
    const Matrix table = random_matrix(random, 4, 5);
    const std::vector<std::int32_t> indices32 = {0, 3, 3, 1, 0, 3};
    const std::vector<std::int64_t> indices64 = {2, 2, 1};
    const std::vector<std::uint8_t> levels = {3, 0, 1, 2, 3, 3, 0};
    check_gradients({table}, [&](Tape<double>& t, const std::vector<Var>& v) {
        return gather_rows(t, v[0], std::span<const std::int32_t>(indices32));
    }, 70);
    check_gradients({table}, [&](Tape<double>& t, const std::vector<Var>& v) {
        return gather_rows(t, v[0], std::span<const std::int64_t>(indices64));
    }, 71);
    // The level modulation of the codec: x * E[level] per sample.
    check_gradients({random_matrix(random, 7, 5), table}, [&](Tape<double>& t, const std::vector<Var>& v) {
        return mul(t, v[0], gather_rows(t, v[1], std::span<const std::uint8_t>(levels)));
    }, 72);
    Tape<double> tape;
    Parameter<double> embedding(table);
    const Var gathered = gather_rows(tape, tape.parameter(embedding), std::span<const std::int32_t>(indices32));
    CHECK(tape.value(gathered).row(2) == table.row(3));
    tape.backward(sum(tape, gathered));
    CHECK(embedding.grad(3, 0) == 3.0);  // row 3 picked three times
    CHECK(embedding.grad(2, 0) == 0.0);  // never picked
    const std::vector<std::int32_t> bad = {0, 4};
    try {
        gather_rows(tape, tape.parameter(embedding), std::span<const std::int32_t>(bad));
        FAIL("no error for an index outside the table");
    } catch (const nwc::error& failure) {
        CHECK(failure.id() == errc::invalid_argument);
        CHECK_THAT(failure.what(), Catch::Contains("index 4 at position 1"));
    }
}

TEST_CASE("autograd: softmax rows, plain and causal", "[autograd][attention]") {
    for_random_shapes(11, 4, [](Random& random, Index m, Index n) {
        const Index cols = std::max(m, n);  // causal needs at least as many keys as queries
        const Matrix x = random_matrix(random, m, cols, -3.0, 3.0);
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return softmax_rows(t, v[0]); }, 80);
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return softmax_rows(t, v[0], true); }, 81);
    });
    Matrix scores(3, 4);
    scores << 1, 2, 3, 4, 0, 0, 0, 0, 5, -5, 1, 1000;
    Tape<double> tape;
    const Matrix plain = tape.value(softmax_rows(tape, tape.constant(scores)));
    const Matrix causal = tape.value(softmax_rows(tape, tape.constant(scores), true));
    CHECK(plain.rowwise().sum().isApprox(Matrix::Ones(3, 1), 1e-15));
    CHECK(plain(2, 3) == Approx(1.0));  // a large score does not overflow
    // 3 queries over 4 keys: query i sees keys 0..i+1.
    CHECK(causal(0, 2) == 0.0);
    CHECK(causal(0, 3) == 0.0);
    CHECK(causal(0, 0) == Approx(1.0 / (1.0 + std::exp(1.0))));
    CHECK(causal(1, 3) == 0.0);
    CHECK(causal(2, 3) == Approx(1.0));
    CHECK(causal.rowwise().sum().isApprox(Matrix::Ones(3, 1), 1e-15));
}

TEST_CASE("autograd: log-softmax and cross-entropy", "[autograd][attention]") {
    for_random_shapes(23, 4, [](Random& random, Index m, Index n) {
        const Matrix logits = random_matrix(random, m, n, -3.0, 3.0);
        check_gradients({logits}, [](Tape<double>& t, const std::vector<Var>& v) { return log_softmax_rows(t, v[0]); }, 85);
        std::vector<std::int32_t> targets;
        for (Index i = 0; i < m; ++i) targets.push_back(std::int32_t(random.below(std::uint64_t(n))));
        check_gradients({logits}, [&](Tape<double>& t, const std::vector<Var>& v) {
            return cross_entropy_rows(t, v[0], std::span<const std::int32_t>(targets));
        }, 86);
        // The loss equals the mean of -log_softmax at the targets.
        Tape<double> tape;
        const Var input = tape.constant(logits);
        const Matrix log_probabilities = tape.value(log_softmax_rows(tape, input));
        double expected = 0.0;
        for (Index i = 0; i < m; ++i) expected -= log_probabilities(i, targets[std::size_t(i)]) / double(m);
        CHECK(tape.item(cross_entropy_rows(tape, input, std::span<const std::int32_t>(targets))) == Approx(expected).epsilon(1e-13));
        CHECK(log_probabilities.array().exp().rowwise().sum().isApprox(Matrix::Ones(m, 1).array(), 1e-14));
    });
    Tape<double> tape;
    const std::vector<std::int32_t> bad = {0, 3};
    CHECK_THROWS_AS(cross_entropy_rows(tape, tape.constant(Matrix::Zero(2, 3)), std::span<const std::int32_t>(bad)), nwc::error);
}

TEST_CASE("autograd: rotary position embedding as llama2.c", "[autograd][attention]") {
    Random random(12);
    for (Index head_dim : {2, 4, 8}) {
        for (Index heads : {1, 3}) {
            const Index rows = random_size(random, 1, 5), offset = Index(random.below(20));
            INFO("head_dim " << head_dim << ", heads " << heads << ", offset " << offset);
            check_gradients({random_matrix(random, rows, heads * head_dim)},
                            [=](Tape<double>& t, const std::vector<Var>& v) { return rope(t, v[0], head_dim, offset); }, 90);
        }
    }
    // Against llama2.c's loop, in float: row t of q is position pos = offset + t.
    const int head_size = 8, heads = 2, positions = 5, offset = 7;
    RowMajorMatrix<float> q(positions, heads * head_size);
    for (Index i = 0; i < q.size(); ++i) q.data()[i] = random.normal();
    RowMajorMatrix<float> expected = q;
    for (int t = 0; t < positions; ++t) {
        const int pos = offset + t;
        for (int i = 0; i < heads * head_size; i += 2) {
            const int head_dim_index = i % head_size;
            const float freq = 1.0f / powf(10000.0f, float(head_dim_index) / float(head_size));
            const float val = float(pos) * freq;
            const float fcr = cosf(val), fci = sinf(val);
            const float v0 = expected(t, i), v1 = expected(t, i + 1);
            expected(t, i) = v0 * fcr - v1 * fci;
            expected(t, i + 1) = v0 * fci + v1 * fcr;
        }
    }
    Tape<float> tape;
    const RowMajorMatrix<float> rotated = tape.value(rope(tape, tape.constant(q), head_size, offset));
    CHECK(rotated == expected);
    CHECK(rotated.rowwise().norm().isApprox(q.rowwise().norm(), 1e-6f));
}

TEST_CASE("autograd: uniform noise, straight-through rounding, clamp, lower bound", "[autograd][quantize]") {
    for_random_shapes(13, 3, [](Random& random, Index m, Index n) {
        // The noise is a function of the seed only, so finite differences see a shifted identity.
        check_gradients({random_matrix(random, m, n)}, [](Tape<double>& t, const std::vector<Var>& v) {
            Random noise(99);
            return add_uniform_noise(t, v[0], noise);
        }, 100);
        Matrix x = away_from_zero(random, m, n, 0.05, 2.0);
        // Keep every value 0.05 away from the bounds -1 and 1 as well.
        for (Index i = 0; i < x.size(); ++i)
            if (std::abs(std::abs(x.data()[i]) - 1.0) < 0.05) x.data()[i] *= 1.2;
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return clamp(t, v[0], -1.0, 1.0); }, 101);
        // Above the bound lower_bound is the identity; below it the rule is not a derivative
        // (checked by hand below).
        check_gradients({x}, [](Tape<double>& t, const std::vector<Var>& v) { return lower_bound(t, v[0], -2.5); }, 102);
    });
    Tape<double> tape;
    Random noise_a(5), noise_b(5);
    const Matrix zeros = Matrix::Zero(50, 40);
    const Matrix noise = tape.value(add_uniform_noise(tape, tape.constant(zeros), noise_a));
    CHECK(noise == tape.value(add_uniform_noise(tape, tape.constant(zeros), noise_b)));
    CHECK(noise.minCoeff() >= -0.5);
    CHECK(noise.maxCoeff() < 0.5);
    CHECK(std::abs(noise.mean()) < 0.02);

    Matrix values(1, 6);
    values << 2.5, 3.5, -0.5, -1.7, 0.49, 1e-12;
    Parameter<double> input(values);
    tape.clear();
    const Var rounded = round_ste(tape, tape.parameter(input));
    Matrix expected(1, 6);
    expected << 2.0, 4.0, -0.0, -2.0, 0.0, 0.0;  // ties to even, as torch.round
    CHECK(tape.value(rounded) == expected);
    Matrix seed(1, 6);
    seed << 1, -2, 3, -4, 5, -6;
    tape.backward(rounded, seed);
    CHECK(input.grad == seed);  // straight through

    // CompressAI's LowerBound: below the bound, only a negative upstream gradient passes.
    Matrix below(1, 4);
    below << 1e-12, 1e-12, 0.5, 0.5;
    Parameter<double> likelihood(below);
    tape.clear();
    const Var bounded = lower_bound(tape, tape.parameter(likelihood), 1e-9);
    CHECK(tape.value(bounded)(0, 0) == 1e-9);
    CHECK(tape.value(bounded)(0, 2) == 0.5);
    Matrix upstream(1, 4);
    upstream << -3.0, 3.0, -3.0, 3.0;
    tape.backward(bounded, upstream);
    CHECK(likelihood.grad(0, 0) == -3.0);
    CHECK(likelihood.grad(0, 1) == 0.0);
    CHECK(likelihood.grad(0, 2) == -3.0);
    CHECK(likelihood.grad(0, 3) == 3.0);
    // The plain clamp blocks both directions outside the range.
    likelihood.zero_grad();
    tape.clear();
    const Var clamped = clamp(tape, tape.parameter(likelihood), 1e-9, 1.0);
    tape.backward(clamped, upstream);
    CHECK(likelihood.grad(0, 0) == 0.0);
    CHECK(likelihood.grad(0, 2) == -3.0);
}

TEST_CASE("autograd: custom op hook", "[autograd][custom]") {
    // A fused cube: y = x^3, dx = 3 x^2 dy.
    const Builder cube = [](Tape<double>& t, const std::vector<Var>& v) {
        const Matrix& x = t.value(v[0]);
        return custom(t, {v[0]}, Matrix(x.array().cube()), [](Tape<double>& tape, Node<double>& node) {
            const Var input = node.inputs[0];
            tape.grad(input).array() += 3.0 * tape.value(input).array().square() * node.grad.array();
        }, "cube");
    };
    for_random_shapes(14, 3, [&](Random& random, Index m, Index n) {
        check_gradients({random_matrix(random, m, n)}, cube, 110);
        // Inside a larger graph, with a second use of the same input.
        check_gradients({random_matrix(random, m, n)}, [&](Tape<double>& t, const std::vector<Var>& v) {
            return mul(t, cube(t, v), tanh(t, v[0]));
        }, 111);
    });
}

namespace {

/// The codec's g_a shape in miniature: Linear, residual blocks x + ReLU(LayerNorm(Linear(x))),
/// each followed by the level modulation x * E[level], then Linear; plus noise and a loss.
Var codec_like_graph(Tape<double>& t, const std::vector<Var>& v, const std::vector<std::uint8_t>& levels) {
    Var h = linear(t, v[0], v[1], v[2]);
    for (int block = 0; block < 2; ++block) {
        const Var inner = linear(t, h, v[3 + 4 * block], v[4 + 4 * block]);
        h = add(t, h, relu(t, layer_norm(t, inner, v[5 + 4 * block], v[6 + 4 * block])));
        h = mul(t, h, gather_rows(t, v[11], std::span<const std::uint8_t>(levels)));
    }
    const Var y = linear(t, h, v[12], v[13]);
    Random noise(3);
    const Var y_tilde = add_uniform_noise(t, y, noise);
    return add(t, mse_loss(t, y_tilde, v[0]), scale(t, mean(t, softplus(t, y_tilde)), 0.1));
}

std::vector<Matrix> codec_like_inputs(Random& random, Index batch, Index width, Index hidden) {
    std::vector<Matrix> inputs = {random_matrix(random, batch, width), random_matrix(random, hidden, width, -0.5, 0.5),
                                  random_matrix(random, 1, hidden, -0.1, 0.1)};
    for (int block = 0; block < 2; ++block) {
        inputs.push_back(random_matrix(random, hidden, hidden, -0.5, 0.5));
        inputs.push_back(random_matrix(random, 1, hidden, -0.1, 0.1));
        inputs.push_back(random_matrix(random, 1, hidden, 0.5, 1.5));
        inputs.push_back(random_matrix(random, 1, hidden, -0.1, 0.1));
    }
    inputs.push_back(random_matrix(random, 4, hidden, 0.5, 1.5));  // E: 4 levels
    inputs.push_back(random_matrix(random, width, hidden, -0.5, 0.5));
    inputs.push_back(random_matrix(random, 1, width, -0.1, 0.1));
    return inputs;
}

}  // namespace

TEST_CASE("autograd: composed graph shaped like the codec", "[autograd][composed]") {
    Random random(15);
    const std::vector<std::uint8_t> levels = {0, 1, 2, 3, 1, 0};
    check_gradients(codec_like_inputs(random, 6, 4, 7),
                    [&](Tape<double>& t, const std::vector<Var>& v) { return codec_like_graph(t, v, levels); }, 120);
}

TEST_CASE("autograd: composed graph shaped like a factorized prior likelihood", "[autograd][composed]") {
    // One channel-shared chain L(x) = softplus(H1) x + b1; x + tanh(a1) tanh(x); softplus(H2) x + b2,
    // likelihood = sigmoid(L(y + 0.5)) - sigmoid(L(y - 0.5)), bounded below, -log2 summed.
    const Builder likelihood = [](Tape<double>& t, const std::vector<Var>& v) {
        auto logits = [&](Var x) {
            Var h = add(t, matmul(t, x, softplus(t, v[1])), v[2]);
            h = add(t, h, mul(t, tanh(t, v[3]), tanh(t, h)));
            return add(t, matmul(t, h, softplus(t, v[4])), v[5]);
        };
        const Var upper = sigmoid(t, logits(add_scalar(t, v[0], 0.5)));
        const Var lower = sigmoid(t, logits(add_scalar(t, v[0], -0.5)));
        const Var bounded = lower_bound(t, sub(t, upper, lower), 1e-9);
        return scale(t, sum(t, nwc::autograd::log(t, bounded)), -1.0 / std::log(2.0));
    };
    Random random(16);
    check_gradients({random_matrix(random, 5, 1, -3.0, 3.0), random_matrix(random, 1, 3), random_matrix(random, 1, 3),
                     random_matrix(random, 1, 3), random_matrix(random, 3, 1), random_matrix(random, 1, 1)},
                    likelihood, 121);
}

TEST_CASE("autograd: composed graph shaped like a transformer block", "[autograd][composed]") {
    // x -> rmsnorm -> q, k (RoPE), v -> two causal heads -> concat -> Wo -> residual -> SiLU MLP.
    const Index head_dim = 4, heads = 2, dim = heads * head_dim;
    const Builder block = [&](Tape<double>& t, const std::vector<Var>& v) {
        const Var normed = rms_norm(t, v[0], v[1]);
        const Var q = rope(t, matmul_nt(t, normed, v[2]), head_dim, 3);
        const Var k = rope(t, matmul_nt(t, normed, v[3]), head_dim, 3);
        const Var values = matmul_nt(t, normed, v[4]);
        std::vector<Var> outputs;
        for (Index h = 0; h < heads; ++h) {
            const Var scores = matmul_nt(t, slice_cols(t, q, h * head_dim, head_dim), slice_cols(t, k, h * head_dim, head_dim));
            const Var attention = softmax_rows(t, scale(t, scores, 1.0 / std::sqrt(double(head_dim))), true);
            outputs.push_back(matmul(t, attention, slice_cols(t, values, h * head_dim, head_dim)));
        }
        const Var x = add(t, v[0], matmul_nt(t, concat_cols(t, outputs), v[5]));
        const Var hidden = mul(t, silu(t, matmul_nt(t, rms_norm(t, x, v[6]), v[7])), gelu(t, matmul_nt(t, x, v[8])));
        return add(t, x, matmul_nt(t, hidden, v[9]));
    };
    Random random(17);
    check_gradients({random_matrix(random, 5, dim), random_matrix(random, 1, dim, 0.5, 1.5),
                     random_matrix(random, dim, dim, -0.5, 0.5), random_matrix(random, dim, dim, -0.5, 0.5),
                     random_matrix(random, dim, dim, -0.5, 0.5), random_matrix(random, dim, dim, -0.5, 0.5),
                     random_matrix(random, 1, dim, 0.5, 1.5), random_matrix(random, 6, dim, -0.5, 0.5),
                     random_matrix(random, 6, dim, -0.5, 0.5), random_matrix(random, dim, 6, -0.5, 0.5)},
                    block, 122);
}

TEST_CASE("autograd: gradients accumulate into parameters until zero_grad", "[autograd][tape]") {
    Random random(18);
    Parameter<double> weight(random_matrix(random, 3, 4));
    const Matrix x = random_matrix(random, 5, 4);
    Tape<double> tape;
    auto step = [&] {
        tape.clear();
        const Var w = tape.parameter(weight);
        // w used twice in one graph: both uses add up as well.
        tape.backward(add(tape, sum(tape, matmul_nt(tape, tape.constant(x), w)), sum(tape, square(tape, w))));
    };
    step();
    const Matrix once = weight.grad;
    const Matrix expected = Matrix::Ones(5, 3).transpose() * x + 2.0 * weight.value;
    CHECK(once.isApprox(expected, 1e-14));
    step();
    CHECK(weight.grad.isApprox(2.0 * once, 1e-14));
    weight.zero_grad();
    CHECK(weight.grad.isZero());
    step();
    CHECK(weight.grad.isApprox(once, 1e-14));
}

TEST_CASE("autograd: tape reuse keeps results and buffers", "[autograd][tape]") {
    Random random(19);
    Parameter<double> weight(random_matrix(random, 6, 4)), bias(random_matrix(random, 1, 6));
    auto run = [&](Tape<double>& tape, const Matrix& x) {
        tape.clear();
        weight.zero_grad();
        bias.zero_grad();
        const Var y = relu(tape, linear(tape, tape.constant(x), tape.parameter(weight), tape.parameter(bias)));
        const Var loss = mean(tape, square(tape, y));
        tape.backward(loss);
        return std::pair<double, Matrix>(tape.item(loss), weight.grad);
    };
    const Matrix big = random_matrix(random, 9, 4), small = random_matrix(random, 2, 4);
    Tape<double> reused;
    run(reused, big);
    const std::size_t nodes = reused.size();
    const double* buffer = reused.value(Var{5}).data();  // relu output, 9 x 6
    run(reused, big);
    CHECK(reused.size() == nodes);
    CHECK(reused.value(Var{5}).data() == buffer);  // same shapes again: the allocation is reused
    const auto [loss_small, grad_small] = run(reused, small);  // other shapes in the same slots
    const auto [loss_big, grad_big] = run(reused, big);
    CHECK(reused.size() == nodes);
    Tape<double> fresh_small, fresh_big;
    CHECK(run(fresh_small, small).first == loss_small);
    CHECK(run(fresh_small, small).second == grad_small);
    CHECK(run(fresh_big, big).first == loss_big);
    CHECK(run(fresh_big, big).second == grad_big);
}

TEST_CASE("autograd: variables, constants and gradient flow", "[autograd][tape]") {
    Random random(20);
    const Matrix a = random_matrix(random, 2, 3), b = random_matrix(random, 2, 3);
    Tape<double> tape;
    const Var x = tape.variable(a);
    const Var c = tape.constant_ref(b);
    const Var y = mul(tape, x, c);
    CHECK(tape.requires_grad(x));
    CHECK_FALSE(tape.requires_grad(c));
    CHECK(tape.requires_grad(y));
    CHECK_FALSE(tape.requires_grad(exp(tape, c)));  // no parameter upstream: no backward recorded
    tape.backward(sum(tape, y));
    CHECK(tape.grad(x) == b);
    CHECK_FALSE(tape.has_grad(c));
    CHECK(tape.value(c).data() == b.data());  // constant_ref does not copy
}

TEMPLATE_TEST_CASE("autograd: float and double agree on the codec-shaped graph", "[autograd][composed]", float, double) {
    using Scalar = TestType;
    Random random(21);
    const Matrix x = random_matrix(random, 32, 16), w1 = random_matrix(random, 24, 16, -0.25, 0.25),
                 w2 = random_matrix(random, 24, 24, -0.2, 0.2), w3 = random_matrix(random, 16, 24, -0.2, 0.2);
    auto gradients = [&](auto scalar_tag) {
        using S = decltype(scalar_tag);
        Parameter<S> p1(w1.cast<S>()), p2(w2.cast<S>()), p3(w3.cast<S>());
        Tape<S> tape;
        const Var input = tape.constant(RowMajorMatrix<S>(x.cast<S>()));
        Var h = linear(tape, input, tape.parameter(p1));
        h = add(tape, h, relu(tape, layer_norm(tape, linear(tape, h, tape.parameter(p2)))));
        const Var loss = mse_loss(tape, linear(tape, h, tape.parameter(p3)), input);
        tape.backward(loss);
        return std::vector<Matrix>{p1.grad.template cast<double>(), p2.grad.template cast<double>(),
                                   p3.grad.template cast<double>()};
    };
    const auto reference = gradients(double{});
    const auto tested = gradients(Scalar{});
    for (std::size_t i = 0; i < reference.size(); ++i) CHECK(tested[i].isApprox(reference[i], 1e-4));
}

TEST_CASE("optimizer: Adam steps match hand-computed values", "[autograd][optimizer]") {
    Parameter<double> p(Matrix::Constant(1, 1, 1.0));
    Adam<double> adam({&p}, AdamOptions{.learning_rate = 0.1});
    // t = 1, g = 0.5: m = 0.05, v = 0.00025, m_hat = 0.5, v_hat = 0.25, p = 1 - 0.1 * 0.5 / (0.5 + 1e-8).
    p.grad(0, 0) = 0.5;
    adam.step();
    CHECK(p.value(0, 0) == Approx(0.900000002).epsilon(1e-15));
    // t = 2, g = -1: m = -0.055, v = 0.00124975, m_hat = -0.055 / 0.19, v_hat = 0.00124975 / 0.001999.
    p.grad(0, 0) = -1.0;
    adam.step();
    CHECK(p.value(0, 0) == Approx(0.9366103542405654).epsilon(1e-14));
    CHECK(adam.step_count() == 2);
    CHECK(adam.first_moment(0)(0, 0) == Approx(-0.055).epsilon(1e-14));
    CHECK(adam.second_moment(0)(0, 0) == Approx(0.00124975).epsilon(1e-14));

    // AdamW: p = 2 (1 - 0.1 * 0.5) - 0.1 * 0.5 / (0.5 + 1e-8).
    Parameter<double> q(Matrix::Constant(1, 1, 2.0));
    Adam<double> adamw({&q}, AdamOptions{.learning_rate = 0.1, .weight_decay = 0.5});
    q.grad(0, 0) = 0.5;
    adamw.step();
    CHECK(q.value(0, 0) == Approx(1.800000002).epsilon(1e-15));
    adamw.zero_grad();
    CHECK(q.grad(0, 0) == 0.0);
}

TEST_CASE("optimizer: Adam fits a small regression", "[autograd][optimizer]") {
    Random random(22);
    const Matrix x = random_matrix(random, 64, 5), true_weight = random_matrix(random, 3, 5), true_bias = random_matrix(random, 1, 3);
    const Matrix y = (x * true_weight.transpose()).rowwise() + true_bias.row(0);
    Parameter<double> weight(3, 5), bias(1, 3);
    Adam<double> adam({&weight, &bias}, AdamOptions{.learning_rate = 0.05});
    const WarmupCosineSchedule schedule{.peak_learning_rate = 0.05, .warmup_steps = 20, .total_steps = 1500,
                                        .final_learning_rate = 1e-4};
    Tape<double> tape;
    double loss = 0.0;
    for (int step = 0; step < 1500; ++step) {
        tape.clear();
        const Var prediction = linear(tape, tape.constant_ref(x), tape.parameter(weight), tape.parameter(bias));
        const Var error = mse_loss(tape, prediction, tape.constant_ref(y));
        loss = tape.item(error);
        adam.zero_grad();
        tape.backward(error);
        clip_gradient_norm(adam.parameters(), 10.0);
        adam.set_learning_rate(schedule(step));
        adam.step();
    }
    CHECK(loss < 1e-8);
    CHECK(weight.value.isApprox(true_weight, 1e-3));
    CHECK(bias.value.isApprox(true_bias, 1e-3));
}

TEST_CASE("optimizer: global-norm clipping and schedules", "[autograd][optimizer]") {
    Parameter<double> a(1, 2), b(1, 1);
    a.grad << 3.0, 0.0;
    b.grad << 4.0;
    std::vector<Parameter<double>*> parameters = {&a, &b};
    CHECK(gradient_norm<double>(parameters) == 5.0);
    CHECK(clip_gradient_norm(parameters, 10.0) == 5.0);  // below the limit: unchanged
    CHECK(a.grad(0, 0) == 3.0);
    CHECK(clip_gradient_norm(parameters, 1.0) == 5.0);
    CHECK(a.grad(0, 0) == Approx(3.0 / (5.0 + 1e-6)).epsilon(1e-15));
    CHECK(b.grad(0, 0) == Approx(4.0 / (5.0 + 1e-6)).epsilon(1e-15));

    CHECK(ConstantSchedule{0.01}(12345) == 0.01);
    const WarmupCosineSchedule schedule{.peak_learning_rate = 1.0, .warmup_steps = 10, .total_steps = 110,
                                        .final_learning_rate = 0.1};
    CHECK(schedule(0) == Approx(0.1));
    CHECK(schedule(4) == Approx(0.5));
    CHECK(schedule(9) == Approx(1.0));
    CHECK(schedule(10) == Approx(1.0));
    CHECK(schedule(60) == Approx(0.55));  // halfway through the cosine
    CHECK(schedule(110) == Approx(0.1));
    CHECK(schedule(500) == Approx(0.1));
}

}  // namespace nwc_test_autograd
