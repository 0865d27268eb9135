// nwc::autograd: reverse-mode automatic differentiation on a tape, its ops and optimizers.
// Include this header for all of it; tape.hpp explains how the engine works.
#pragma once

#include "nwc/autograd/tape.hpp"
#include "nwc/autograd/ops_attention.hpp"
#include "nwc/autograd/ops_elementwise.hpp"
#include "nwc/autograd/ops_linear.hpp"
#include "nwc/autograd/ops_norm.hpp"
#include "nwc/autograd/ops_shape.hpp"
#include "nwc/autograd/optimizer.hpp"
