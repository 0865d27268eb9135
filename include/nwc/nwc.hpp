// nwc: neural weight compression for language models. The umbrella header: includes everything.
#pragma once

#include "nwc/version.hpp"
#include "nwc/fwd.hpp"

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/core/thread_pool.hpp"
