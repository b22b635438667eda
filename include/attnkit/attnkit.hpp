// attnkit: efficient attention kernels for the CPU. Umbrella header of the public API.
#pragma once

#include "config.hpp"
#include "core/dtypes.hpp"
#include "core/error.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "mask/masks.hpp"
#include "dispatch/isa.hpp"
#include "attention.hpp"
#include "paged.hpp"
#include "kv_cache.hpp"
#include "linear.hpp"
#include "latent.hpp"
#include "reference/reference.hpp"
#include "reference/linear.hpp"
#include "reference/latent.hpp"
