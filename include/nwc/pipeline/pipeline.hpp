// The compression pipeline: model files in and out (model_file.hpp), the per-tensor methods
// (method_rtn.hpp, method_ecsq.hpp, method_nwc.hpp), the composed codec (pipeline_codec.hpp) and
// rate control (rate_control.hpp). Byte layouts: docs/format/methods.md.
#pragma once

#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method_ecsq.hpp"
#include "nwc/pipeline/method_nwc.hpp"
#include "nwc/pipeline/method_rtn.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"
#include "nwc/pipeline/rate_control.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
