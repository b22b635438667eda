// The packaging tests' problem: 4 query heads share 2 KV heads (GQA); 5 queries at the end
// of 9 keys (bottom-right aligned, causal); q/k dim 16, v dim 8; batch 2.
#pragma once

namespace pkgtest {
constexpr int B = 2, HQ = 4, HK = 2, LQ = 5, LK = 9, D = 16, DV = 8;
}  // namespace pkgtest
