// Reverse-mode automatic differentiation on a tape: the core (Var, Node, Tape; Parameter is
// autograd/parameter.hpp's).
//
// Read me first:
// - Every value is a 2-D row-major Eigen matrix (RowMajorMatrix<Scalar>); a vector is 1 x n, a
//   scalar 1 x 1. Ops are free functions `op(tape, inputs...)` in the ops_*.hpp headers, each with
//   its forward code and its backward lambda side by side; `backward(root)` is one reverse sweep
//   over the nodes in recording order (recording order is a topological order by construction).
// - Backward functions ACCUMULATE (`+=`) into their inputs' gradients: an input used twice gets
//   the sum, and a Parameter's gradient accumulates across backward passes until zero_grad()
//   (the optimizer's zero_grad() or Parameter::zero_grad()).
// - `clear()` forgets the nodes but keeps every node's matrices, so a training step that records
//   the same graph shapes again reuses the allocations (Eigen's resize to the same size is a no-op).
//   Nodes live behind unique_ptr so references to values stay valid while more nodes are recorded.
// - A Var is an index into ONE tape and is valid until that tape's clear().
// - Parameters are owned by the model; `tape.parameter(p)` records a leaf that reads p.value
//   without copying and whose gradient IS p.grad.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "nwc/autograd/parameter.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc::autograd {

/// A handle to a node of a Tape: an index, valid until the tape's clear(). Default: "no value".
struct Var {
    std::int32_t index = -1;
    /// True when this Var names a node (false for the default "none", e.g. an absent bias).
    bool valid() const noexcept { return index >= 0; }
};

template <class Scalar> class Tape;

/// One recorded value. Op authors read `inputs`, `value`, `saved`, `indices`, `constants` in
/// backward; everything else is the tape's business.
template <class Scalar>
struct Node {
    using Matrix = RowMajorMatrix<Scalar>;
    using BackwardFn = std::function<void(Tape<Scalar>&, Node&)>;

    Matrix value;                        ///< Output of the op (unused when `external` is set).
    Matrix grad;                         ///< d root / d value, valid while `grad_ready`.
    Matrix saved[2];                     ///< Op-specific buffers kept for backward (statistics, noise).
    std::vector<Var> inputs;             ///< Operands, in the op's order.
    std::vector<std::int64_t> indices;   ///< Op-specific integers (gather indices, offsets, shapes).
    Scalar constants[4] = {};            ///< Op-specific constants (scale, epsilon, bounds).
    BackwardFn backward;                 ///< Empty for leaves and for ops no gradient flows through.
    const Matrix* external = nullptr;    ///< Value stored outside the tape (parameter, constant_ref).
    Parameter<Scalar>* parameter = nullptr;  ///< Set for parameter leaves: grad is parameter->grad.
    const char* op_name = "leaf";
    bool requires_grad = false;
    bool grad_ready = false;

    const Matrix& read() const noexcept { return external ? *external : value; }
};

/// The tape: records values and backward closures, then runs one reverse sweep.
template <class Scalar>
class Tape {
public:
    using Matrix = RowMajorMatrix<Scalar>;
    using NodeType = Node<Scalar>;
    using BackwardFn = typename NodeType::BackwardFn;

    Tape() = default;
    Tape(const Tape&) = delete;
    Tape& operator=(const Tape&) = delete;
    Tape(Tape&&) noexcept = default;
    Tape& operator=(Tape&&) noexcept = default;

    /// Forgets every node (all Vars become invalid) but keeps their buffers for the next step.
    void clear() noexcept { m_size = 0; }
    /// Number of recorded nodes.
    std::size_t size() const noexcept { return m_size; }

    /// A leaf holding a copy of `value`; no gradient.
    Var constant(const Matrix& value) {
        const Var var = new_node("constant", false);
        m_nodes[std::size_t(var.index)]->value = value;
        return var;
    }
    /// A leaf that takes `value` over; no gradient.
    Var constant(Matrix&& value) {
        const Var var = new_node("constant", false);
        m_nodes[std::size_t(var.index)]->value = std::move(value);
        return var;
    }
    /// A leaf that reads `value` in place (no copy); the caller keeps it alive and unchanged
    /// until clear(). No gradient.
    Var constant_ref(const Matrix& value) {
        const Var var = new_node("constant", false);
        m_nodes[std::size_t(var.index)]->external = &value;
        return var;
    }
    /// A leaf holding a copy of `value` whose gradient tape.grad(var) can be read after backward.
    Var variable(const Matrix& value) {
        const Var var = new_node("variable", true);
        m_nodes[std::size_t(var.index)]->value = value;
        return var;
    }
    /// A leaf that reads parameter.value in place; backward accumulates into parameter.grad.
    /// The parameter must outlive the tape's next clear().
    Var parameter(Parameter<Scalar>& parameter) {
        const Var var = new_node("parameter", true);
        NodeType& node = *m_nodes[std::size_t(var.index)];
        node.external = &parameter.value;
        node.parameter = &parameter;
        return var;
    }

    /// The value of a node.
    const Matrix& value(Var var) const { return node(var).read(); }
    Index rows(Var var) const { return value(var).rows(); }
    Index cols(Var var) const { return value(var).cols(); }
    /// The single element of a 1 x 1 value (a loss).
    Scalar item(Var var) const {
        const Matrix& matrix = value(var);
        NWC_ASSERT(matrix.rows() == 1 && matrix.cols() == 1);
        return matrix(0, 0);
    }
    /// Whether a gradient flows to this node (a parameter or variable leaf is upstream of it).
    bool requires_grad(Var var) const { return node(var).requires_grad; }

    /// The gradient of a node, created as zeros on first use in a backward pass. For a parameter
    /// leaf this is parameter.grad itself. Backward functions add into it.
    Matrix& grad(Var var) {
        NodeType& target = node(var);
        if (target.parameter) {
            Parameter<Scalar>& parameter = *target.parameter;
            if (parameter.grad.rows() != parameter.value.rows() || parameter.grad.cols() != parameter.value.cols())
                parameter.zero_grad();
            target.grad_ready = true;
            return parameter.grad;
        }
        if (!target.grad_ready) {
            const Matrix& current = target.read();
            target.grad.setZero(current.rows(), current.cols());
            target.grad_ready = true;
        }
        return target.grad;
    }
    /// Whether the last backward pass produced a gradient for this node.
    bool has_grad(Var var) const { return node(var).grad_ready; }

    /// Op authors: the gradient buffer of `var`, for an update that saves grad()'s zero fill.
    /// When `overwrite` comes back true the buffer has the right shape but stale contents and the
    /// caller must ASSIGN every element; when false it must ADD (parameters always add).
    Matrix& grad_for_update(Var var, bool& overwrite) {
        NodeType& target = node(var);
        overwrite = !target.parameter && !target.grad_ready;
        if (!overwrite) return grad(var);
        const Matrix& current = target.read();
        target.grad.resize(current.rows(), current.cols());
        target.grad_ready = true;
        return target.grad;
    }
    /// Op authors: gradient(var) += expression (assigned instead on the first write of a
    /// backward pass). The expression must have var's shape and must not read var's gradient.
    template <class Expression>
    void accumulate_grad(Var var, const Expression& expression) {
        bool overwrite = false;
        Matrix& target = grad_for_update(var, overwrite);
        if (overwrite) target.noalias() = expression;
        else target.noalias() += expression;
    }

    /// Direct access to a node (op authors).
    NodeType& node(Var var) {
        NWC_ASSERT(var.index >= 0 && std::size_t(var.index) < m_size);
        return *m_nodes[std::size_t(var.index)];
    }
    const NodeType& node(Var var) const {
        NWC_ASSERT(var.index >= 0 && std::size_t(var.index) < m_size);
        return *m_nodes[std::size_t(var.index)];
    }

    /// Records an op (op authors): a new node with these inputs whose value the caller then
    /// writes through output(var). The backward function is kept only when some input requires
    /// a gradient. The returned node's `indices`/`saved`/`constants` are free for the op.
    Var record(const char* op_name, std::span<const Var> inputs, BackwardFn backward) {
        bool needs_grad = false;
        for (Var input : inputs) needs_grad = needs_grad || node(input).requires_grad;
        const Var var = new_node(op_name, needs_grad);
        NodeType& created = *m_nodes[std::size_t(var.index)];
        created.inputs.assign(inputs.begin(), inputs.end());
        if (needs_grad) created.backward = std::move(backward);
        return var;
    }
    Var record(const char* op_name, std::initializer_list<Var> inputs, BackwardFn backward) {
        return record(op_name, std::span<const Var>(inputs.begin(), inputs.size()), std::move(backward));
    }
    /// The value buffer of an op's output, to be written by the op's forward code.
    Matrix& output(Var var) {
        NodeType& target = node(var);
        NWC_ASSERT(target.external == nullptr);
        return target.value;
    }

    /// Back-propagates from `root` with seed gradient 1 for every element of root (for a 1 x 1
    /// loss: d loss / d node). Parameter gradients accumulate; intermediate gradients are reset.
    void backward(Var root) {
        const Matrix& root_value = value(root);
        backward(root, Matrix::Ones(root_value.rows(), root_value.cols()));
    }
    /// Back-propagates from `root` with an explicit seed gradient of root's shape.
    void backward(Var root, const Matrix& seed) {
        NWC_ASSERT(seed.rows() == rows(root) && seed.cols() == cols(root));
        for (std::size_t i = 0; i < m_size; ++i) m_nodes[i]->grad_ready = false;
        if (!node(root).requires_grad) return;
        grad(root) += seed;
        for (std::int64_t i = root.index; i >= 0; --i) {
            NodeType& current = *m_nodes[std::size_t(i)];
            if (current.grad_ready && current.backward) current.backward(*this, current);
        }
    }

private:
    Var new_node(const char* op_name, bool requires_grad) {
        if (m_size == m_nodes.size()) m_nodes.push_back(std::make_unique<NodeType>());
        NodeType& created = *m_nodes[m_size];
        created.inputs.clear();
        created.indices.clear();
        created.backward = nullptr;
        created.external = nullptr;
        created.parameter = nullptr;
        created.op_name = op_name;
        created.requires_grad = requires_grad;
        created.grad_ready = false;
        for (Scalar& constant : created.constants) constant = Scalar(0);
        NWC_ASSERT(m_size < std::size_t(INT32_MAX));
        return Var{std::int32_t(m_size++)};
    }

    std::vector<std::unique_ptr<NodeType>> m_nodes;
    std::size_t m_size = 0;
};

/// Records a caller-defined op: `value` is the forward result, `backward(tape, node)` adds the
/// inputs' gradients (tape.grad(node.inputs[k]) += ...) from tape's node.grad. Use it for fused
/// ops; node.saved/indices/constants may be filled through tape.node(result) after the call.
template <class Scalar>
Var custom(Tape<Scalar>& tape, std::span<const Var> inputs, RowMajorMatrix<Scalar> value,
           typename Tape<Scalar>::BackwardFn backward, const char* op_name = "custom") {
    const Var out = tape.record(op_name, inputs, std::move(backward));
    tape.output(out) = std::move(value);
    return out;
}
template <class Scalar>
Var custom(Tape<Scalar>& tape, std::initializer_list<Var> inputs, RowMajorMatrix<Scalar> value,
           typename Tape<Scalar>::BackwardFn backward, const char* op_name = "custom") {
    return custom(tape, std::span<const Var>(inputs.begin(), inputs.size()), std::move(value), std::move(backward),
                  op_name);
}

}  // namespace nwc::autograd
