// The decoding halves of the built-in methods (BuiltinDecodings), in BuiltinMethods' order: what
// a decoding-only program (<nwc/decode.hpp>, the CUDA decoder) dispatches a container entry's
// method name over. Each header holds a method's Layout, parse and decode_segment and none of its
// encoder (quantizers, LDLQ, table fitting, the neural encoder), so decoding compiles without them.
#pragma once

#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_ecsq_decoding.hpp"
#include "nwc/pipeline/method_lossless_decoding.hpp"
#include "nwc/pipeline/method_nwc_decoding.hpp"
#include "nwc/pipeline/method_rtn_decoding.hpp"
#include "nwc/pipeline/method_tcq_decoding.hpp"

namespace nwc {

using BuiltinDecodings = MethodList<NwcDecoding, EcsqDecoding, TcqDecoding, GptqDecoding, RtnDecoding, LosslessDecoding>;

}  // namespace nwc
