// The methods every nwc::Codec knows unless it is given its own list: adding a built-in method is
// one header and one entry here (the order is the order tools list them in).
#pragma once

#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_ecsq.hpp"
#include "nwc/pipeline/method_lossless.hpp"
#include "nwc/pipeline/method_nwc.hpp"
#include "nwc/pipeline/method_rtn.hpp"
#include "nwc/pipeline/method_tcq.hpp"

namespace nwc {

using BuiltinMethods = MethodList<NwcMethod, EcsqMethod, TcqMethod, GptqMethod, RtnMethod, LosslessMethod>;

}  // namespace nwc
