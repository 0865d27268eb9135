// Tensors: an owning, row-major `Tensor<T>` and a non-owning `TensorView<T>` over the same layout.
//
// Weights arrive as float32, float16 or bfloat16 and are computed on in float32; `dtype` names the
// storage type in files, `convert()` moves values between storage types. Shapes have at most four
// dimensions (a weight matrix is [out, in], the layout of torch.nn.Linear and of safetensors files).
// Sizes are std::int64_t everywhere so that shape arithmetic from untrusted headers can be checked
// for overflow before anything is allocated (see checked_numel).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"

namespace nwc {

/// Storage type of a tensor in a file or in memory.
enum class dtype : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, i32 = 3, u8 = 4 };

/// Bytes per element.
constexpr std::size_t dtype_size(dtype type) noexcept {
    switch (type) {
        case dtype::f32: return 4;
        case dtype::f16: return 2;
        case dtype::bf16: return 2;
        case dtype::i32: return 4;
        case dtype::u8: return 1;
    }
    return 0;
}

/// The name safetensors uses for a dtype ("F32", "F16", "BF16", "I32", "U8").
constexpr std::string_view dtype_name(dtype type) noexcept {
    switch (type) {
        case dtype::f32: return "F32";
        case dtype::f16: return "F16";
        case dtype::bf16: return "BF16";
        case dtype::i32: return "I32";
        case dtype::u8: return "U8";
    }
    return "?";
}

/// Parses a dtype name; throws errc::unsupported for anything else.
inline dtype dtype_from_name(std::string_view name) {
    for (dtype type : {dtype::f32, dtype::f16, dtype::bf16, dtype::i32, dtype::u8})
        if (dtype_name(type) == name) return type;
    fail(errc::unsupported, "dtype '", name, "' is not supported (F32, F16, BF16, I32, U8 are)");
}

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of<half> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of<bfloat16> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of<std::uint8_t> { static constexpr dtype value = dtype::u8; };

/// Product of dims, or errc::limit if it overflows or exceeds `max_elements`.
inline std::int64_t checked_numel(std::span<const std::int64_t> dims,
                                  std::int64_t max_elements = std::numeric_limits<std::int64_t>::max()) {
    std::int64_t count = 1;
    for (std::int64_t dim : dims) {
        require(dim >= 0, errc::corrupt, "negative dimension ", dim);
        if (dim != 0 && count > max_elements / dim) fail(errc::limit, "shape has more than ", max_elements, " elements");
        count *= dim;
    }
    return count;
}

/// A shape of up to four dimensions.
class Shape {
public:
    static constexpr int max_rank = 4;

    Shape() = default;
    Shape(std::initializer_list<std::int64_t> dims) : Shape(std::span<const std::int64_t>(dims.begin(), dims.size())) {}
    explicit Shape(std::span<const std::int64_t> dims) {
        require(dims.size() <= std::size_t(max_rank), errc::unsupported, "rank ", dims.size(), " exceeds ", max_rank);
        checked_numel(dims);
        m_rank = int(dims.size());
        std::copy(dims.begin(), dims.end(), m_dims.begin());
    }

    int rank() const noexcept { return m_rank; }
    std::int64_t operator[](int axis) const noexcept { return m_dims[std::size_t(axis)]; }
    std::span<const std::int64_t> dims() const noexcept { return {m_dims.data(), std::size_t(m_rank)}; }
    std::int64_t numel() const noexcept {
        std::int64_t count = 1;
        for (int axis = 0; axis < m_rank; ++axis) count *= m_dims[std::size_t(axis)];
        return count;
    }
    /// Rows of the matrix view: the product of all but the last dimension (1 for a scalar).
    std::int64_t rows() const noexcept { return m_rank == 0 ? 1 : numel() / std::max<std::int64_t>(cols(), 1) ; }
    /// Columns of the matrix view: the last dimension.
    std::int64_t cols() const noexcept { return m_rank == 0 ? 1 : m_dims[std::size_t(m_rank - 1)]; }

    friend bool operator==(const Shape& a, const Shape& b) noexcept {
        return a.m_rank == b.m_rank && std::equal(a.m_dims.begin(), a.m_dims.begin() + a.m_rank, b.m_dims.begin());
    }

private:
    std::array<std::int64_t, max_rank> m_dims{};
    int m_rank = 0;
};

template <class T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A non-owning, row-major view of contiguous elements.
template <class T>
class TensorView {
public:
    using value_type = std::remove_const_t<T>;

    TensorView() = default;
    TensorView(T* data, Shape shape) : m_data(data), m_shape(shape) {}
    /// A const view of a mutable one.
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    TensorView(TensorView<U> other) : m_data(other.data()), m_shape(other.shape()) {}

    T* data() const noexcept { return m_data; }
    const Shape& shape() const noexcept { return m_shape; }
    std::int64_t numel() const noexcept { return m_shape.numel(); }
    std::int64_t rows() const noexcept { return m_shape.rows(); }
    std::int64_t cols() const noexcept { return m_shape.cols(); }
    std::span<T> span() const noexcept { return {m_data, std::size_t(numel())}; }

    T& operator[](std::int64_t index) const noexcept { return m_data[index]; }
    /// Element (row, col) of the matrix view.
    T& operator()(std::int64_t row, std::int64_t col) const noexcept { return m_data[row * cols() + col]; }
    /// Row `row` of the matrix view.
    std::span<T> row(std::int64_t row) const noexcept { return {m_data + row * cols(), std::size_t(cols())}; }

    /// The matrix view as an Eigen map (float and double only).
    auto matrix() const {
        using Matrix = RowMajorMatrix<value_type>;
        if constexpr (std::is_const_v<T>) {
            return Eigen::Map<const Matrix>(m_data, rows(), cols());
        } else {
            return Eigen::Map<Matrix>(m_data, rows(), cols());
        }
    }

private:
    T* m_data = nullptr;
    Shape m_shape;
};

/// An owning, row-major tensor.
template <class T>
class Tensor {
public:
    Tensor() = default;
    explicit Tensor(Shape shape, T fill = T{}) : m_shape(shape), m_storage(std::size_t(shape.numel()), fill) {}
    Tensor(Shape shape, std::vector<T> values) : m_shape(shape), m_storage(std::move(values)) {
        require(std::int64_t(m_storage.size()) == shape.numel(), errc::invalid_argument, "tensor: ", m_storage.size(),
                " values for a shape of ", shape.numel(), " elements");
    }

    T* data() noexcept { return m_storage.data(); }
    const T* data() const noexcept { return m_storage.data(); }
    const Shape& shape() const noexcept { return m_shape; }
    std::int64_t numel() const noexcept { return m_shape.numel(); }
    std::int64_t rows() const noexcept { return m_shape.rows(); }
    std::int64_t cols() const noexcept { return m_shape.cols(); }
    std::vector<T>& values() noexcept { return m_storage; }
    const std::vector<T>& values() const noexcept { return m_storage; }

    T& operator[](std::int64_t index) noexcept { return m_storage[std::size_t(index)]; }
    const T& operator[](std::int64_t index) const noexcept { return m_storage[std::size_t(index)]; }
    T& operator()(std::int64_t row, std::int64_t col) noexcept { return m_storage[std::size_t(row * cols() + col)]; }
    const T& operator()(std::int64_t row, std::int64_t col) const noexcept { return m_storage[std::size_t(row * cols() + col)]; }

    TensorView<T> view() noexcept { return {data(), m_shape}; }
    TensorView<const T> view() const noexcept { return {data(), m_shape}; }
    operator TensorView<T>() noexcept { return view(); }
    operator TensorView<const T>() const noexcept { return view(); }
    auto matrix() { return view().matrix(); }
    auto matrix() const { return view().matrix(); }

private:
    Shape m_shape;
    std::vector<T> m_storage;
};

/// Converts element by element between storage types (float, half, bfloat16), rounding to
/// nearest even when narrowing. Shapes must have equal element counts.
template <class From, class To>
void convert(TensorView<const From> source, TensorView<To> target) {
    NWC_ASSERT(source.numel() == target.numel());
    const std::int64_t count = source.numel();
    for (std::int64_t i = 0; i < count; ++i) target[i] = from_float<To>(to_float(source[i]));
}

/// A float32 copy of any floating-point tensor.
template <class From>
Tensor<float> to_float32(TensorView<const From> source) {
    Tensor<float> result(source.shape());
    convert<From, float>(source, result.view());
    return result;
}

}  // namespace nwc
