// Forward declarations of nwc's public types, for headers that only name them.
#pragma once

#include <cstdint>

namespace nwc {
struct half;
struct bfloat16;
enum class dtype : std::uint8_t;
enum class errc;
class error;
class Shape;
template <class T> class TensorView;
template <class T> class Tensor;
class ByteReader;
class ByteWriter;
class MappedFile;
class AtomicFileWriter;
class Random;
namespace backend {
struct scalar;
struct simd;
struct cuda;
}  // namespace backend
}  // namespace nwc
