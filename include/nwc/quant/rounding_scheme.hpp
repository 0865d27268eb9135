// nwc::RoundingScheme: how a group of weights gets its scale under round-to-nearest (rtn, gptq).
//
// Apart from the quantizer (quant/round_to_nearest.hpp) because the rtn/gptq decoder reads it from
// a file's method layout and needs nothing else of the encoder: <nwc/decode.hpp> includes this
// header, not the quantizer. What each scheme computes: round_to_nearest.hpp's header comment.
#pragma once

#include <cstdint>

namespace nwc {

/// How RoundToNearest picks a group's scale.
enum class RoundingScheme : std::uint8_t {
    signed_max = 0,  ///< ggml Q4_0 / Q5_0: d = max / -2^(b-1), codes 0 .. 2^b - 1, all levels used
    absmax = 1,      ///< ggml Q8_0: d = amax / (2^(b-1) - 1), symmetric codes, one level unused
    grid = 2,        ///< d = +- a quarter-octave grid value, the least squared error (round_to_nearest.hpp)
};

}  // namespace nwc
