// <nwc/train.hpp>: training neural codecs: the reverse-mode autograd, the ResidualMLP training
// path, CodecModel, CodecTrainer, the training corpus and codec evaluation, the .nwcc file.
#pragma once

#include "nwc/autograd/autograd.hpp"
#include "nwc/autograd/optimizer.hpp"
#include "nwc/codec/codec_evaluation.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/codec/training_corpus.hpp"
#include "nwc/nn/residual_mlp.hpp"
#include "nwc/nn/residual_mlp_tape.hpp"
