// The methods every nwc::Codec knows unless it is given its own list: adding a built-in method is
// one header and one entry here (the order is the order tools list them in), and, when it splits
// its decoder into a header of its own as the built-in ones do, one entry in BuiltinDecodings
// (builtin_decodings.hpp), which decoding-only programs use.
#pragma once

#include <type_traits>

#include "nwc/pipeline/builtin_decodings.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_ecsq.hpp"
#include "nwc/pipeline/method_lossless.hpp"
#include "nwc/pipeline/method_nwc.hpp"
#include "nwc/pipeline/method_rtn.hpp"
#include "nwc/pipeline/method_tcq.hpp"

namespace nwc {

using BuiltinMethods = MethodList<NwcMethod, EcsqMethod, TcqMethod, GptqMethod, RtnMethod, LosslessMethod>;

// Both lists name the same methods in the same order: a method's entry here derives from its
// decoding half there (a file decodes the same through either).
static_assert([]<class... Ms, class... Ds>(MethodList<Ms...>, MethodList<Ds...>) {
    if constexpr (sizeof...(Ms) != sizeof...(Ds)) return false;
    else return (std::is_base_of_v<Ds, Ms> && ...);
}(BuiltinMethods{}, BuiltinDecodings{}));

}  // namespace nwc
