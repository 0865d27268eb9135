// Shape ops: reshape, transpose, row/column slices, concatenation, and row gather (embedding
// lookup). They move values; their backward passes move (or scatter-add) gradients back.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>

#include "nwc/autograd/tape.hpp"
#include "nwc/core/error.hpp"

namespace nwc::autograd {

/// The same row-major elements viewed as rows x cols (rows * cols must equal the element count).
template <class Scalar>
Var reshape(Tape<Scalar>& tape, Var x, Index rows, Index cols) {
    using Matrix = RowMajorMatrix<Scalar>;
    const Var out = tape.record("reshape", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var input = n.inputs[0];
        t.accumulate_grad(input, Eigen::Map<const Matrix>(n.grad.data(), t.rows(input), t.cols(input)));
    });
    const auto& input = tape.value(x);
    NWC_ASSERT(rows * cols == input.size());
    auto& result = tape.output(out);
    result.resize(rows, cols);
    result = Eigen::Map<const Matrix>(input.data(), rows, cols);
    return out;
}

/// x^T.
template <class Scalar>
Var transpose(Tape<Scalar>& tape, Var x) {
    const Var out = tape.record("transpose", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        t.accumulate_grad(n.inputs[0], n.grad.transpose());
    });
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.cols(), input.rows());
    result.noalias() = input.transpose();
    return out;
}

/// Rows [begin, begin + count) of x.
template <class Scalar>
Var slice_rows(Tape<Scalar>& tape, Var x, Index begin, Index count) {
    const Var out = tape.record("slice_rows", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        t.grad(n.inputs[0]).middleRows(Index(n.indices[0]), n.grad.rows()) += n.grad;
    });
    tape.node(out).indices.push_back(begin);
    const auto& input = tape.value(x);
    NWC_ASSERT(begin >= 0 && count >= 0 && begin + count <= input.rows());
    auto& result = tape.output(out);
    result.resize(count, input.cols());
    result = input.middleRows(begin, count);
    return out;
}

/// Columns [begin, begin + count) of x (e.g. one attention head of a q, k or v matrix).
template <class Scalar>
Var slice_cols(Tape<Scalar>& tape, Var x, Index begin, Index count) {
    const Var out = tape.record("slice_cols", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        t.grad(n.inputs[0]).middleCols(Index(n.indices[0]), n.grad.cols()) += n.grad;
    });
    tape.node(out).indices.push_back(begin);
    const auto& input = tape.value(x);
    NWC_ASSERT(begin >= 0 && count >= 0 && begin + count <= input.cols());
    auto& result = tape.output(out);
    result.resize(input.rows(), count);
    result = input.middleCols(begin, count);
    return out;
}

/// The parts stacked vertically (all with the same column count).
template <class Scalar>
Var concat_rows(Tape<Scalar>& tape, std::span<const Var> parts) {
    NWC_ASSERT(!parts.empty());
    const Var out = tape.record("concat_rows", parts, [](Tape<Scalar>& t, Node<Scalar>& n) {
        Index offset = 0;
        for (const Var part : n.inputs) {
            const Index rows = t.rows(part);
            if (t.requires_grad(part)) t.accumulate_grad(part, n.grad.middleRows(offset, rows));
            offset += rows;
        }
    });
    Index rows = 0;
    const Index cols = tape.cols(parts[0]);
    for (const Var part : parts) {
        NWC_ASSERT(tape.cols(part) == cols);
        rows += tape.rows(part);
    }
    auto& result = tape.output(out);
    result.resize(rows, cols);
    Index offset = 0;
    for (const Var part : parts) {
        result.middleRows(offset, tape.rows(part)) = tape.value(part);
        offset += tape.rows(part);
    }
    return out;
}
template <class Scalar>
Var concat_rows(Tape<Scalar>& tape, std::initializer_list<Var> parts) {
    return concat_rows(tape, std::span<const Var>(parts.begin(), parts.size()));
}

/// The parts side by side (all with the same row count), e.g. attention heads back together.
template <class Scalar>
Var concat_cols(Tape<Scalar>& tape, std::span<const Var> parts) {
    NWC_ASSERT(!parts.empty());
    const Var out = tape.record("concat_cols", parts, [](Tape<Scalar>& t, Node<Scalar>& n) {
        Index offset = 0;
        for (const Var part : n.inputs) {
            const Index cols = t.cols(part);
            if (t.requires_grad(part)) t.accumulate_grad(part, n.grad.middleCols(offset, cols));
            offset += cols;
        }
    });
    const Index rows = tape.rows(parts[0]);
    Index cols = 0;
    for (const Var part : parts) {
        NWC_ASSERT(tape.rows(part) == rows);
        cols += tape.cols(part);
    }
    auto& result = tape.output(out);
    result.resize(rows, cols);
    Index offset = 0;
    for (const Var part : parts) {
        result.middleCols(offset, tape.cols(part)) = tape.value(part);
        offset += tape.cols(part);
    }
    return out;
}
template <class Scalar>
Var concat_cols(Tape<Scalar>& tape, std::initializer_list<Var> parts) {
    return concat_cols(tape, std::span<const Var>(parts.begin(), parts.size()));
}

namespace detail {

template <class Scalar, class Integer>
Var gather_rows_impl(Tape<Scalar>& tape, Var table, std::span<const Integer> row_indices) {
    const Var out = tape.record("gather_rows", {table}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        auto& target = t.grad(n.inputs[0]);
        // Scatter-add: a row picked several times receives the sum of its gradients.
        for (std::size_t i = 0; i < n.indices.size(); ++i) target.row(Index(n.indices[i])) += n.grad.row(Index(i));
    });
    const auto& source = tape.value(table);
    Node<Scalar>& node = tape.node(out);
    node.indices.resize(row_indices.size());
    for (std::size_t i = 0; i < row_indices.size(); ++i) {
        const std::int64_t row = std::int64_t(row_indices[i]);
        require(row >= 0 && row < std::int64_t(source.rows()), errc::invalid_argument, "gather_rows: index ", row,
                " at position ", i, " is outside the table's ", source.rows(), " rows");
        node.indices[i] = row;
    }
    auto& result = tape.output(out);
    result.resize(Index(row_indices.size()), source.cols());
    for (std::size_t i = 0; i < row_indices.size(); ++i) result.row(Index(i)) = source.row(Index(node.indices[i]));
    return out;
}

}  // namespace detail

/// Rows table[indices[i]] stacked (embedding lookup; e.g. E[level] per sample). Throws
/// errc::invalid_argument for an index outside the table. Backward scatter-adds.
template <class Scalar>
Var gather_rows(Tape<Scalar>& tape, Var table, std::span<const std::int32_t> indices) {
    return detail::gather_rows_impl(tape, table, indices);
}
template <class Scalar>
Var gather_rows(Tape<Scalar>& tape, Var table, std::span<const std::int64_t> indices) {
    return detail::gather_rows_impl(tape, table, indices);
}
template <class Scalar>
Var gather_rows(Tape<Scalar>& tape, Var table, std::span<const std::uint8_t> indices) {
    return detail::gather_rows_impl(tape, table, indices);
}

}  // namespace nwc::autograd
