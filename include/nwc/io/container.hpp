// The .nwc container: one file holding every compressed tensor of a model, the codec blobs that
// decode them and the metadata needed to rebuild the source file. Layout: docs/format/container.md.
#pragma once

#include "nwc/io/container_format.hpp"
#include "nwc/io/container_layout.hpp"
#include "nwc/io/container_reader.hpp"
#include "nwc/io/container_writer.hpp"
