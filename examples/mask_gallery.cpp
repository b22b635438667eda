// Prints the allowed (query, key) pairs of every built-in mask as a grid: '#' allowed,
// '.' masked. Rows are query positions, columns key positions (Lq = Lk = 12 here). The
// README's pictures come from this program.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

template <class Mask>
void show(const char* name, const Mask& mask, std::int64_t n = 12) {
  std::printf("%s\n", name);
  for (std::int64_t q = 0; q < n; ++q) {
    std::printf("  ");
    for (std::int64_t k = 0; k < n; ++k) std::printf("%c", mask.allowed(0, 0, q, k) ? '#' : '.');
    std::printf("\n");
  }
  std::printf("\n");
}

int main() {
  using namespace attnkit;
  show("causal{}", causal{});
  show("sliding_window{4}", sliding_window{4});
  show("local_window{2, 1}", local_window{2, 1});
  show("sink_tokens{2}", sink_tokens{2});
  show("(sliding_window{4} | sink_tokens{2}) & causal{}   (StreamingLLM)", (sliding_window{4} | sink_tokens{2}) & causal{});
  // 3 x 3 blocks of 4 x 4 positions: a diagonal plus a global first key block (BigBird-like).
  const std::vector<std::uint8_t> bits = {1, 0, 0,  //
                                          1, 1, 0,  //
                                          1, 0, 1};
  show("block_mask(bits, 1 head, 3 x 3 blocks of 4 x 4)", block_mask(bits.data(), 1, 3, 3, 4, 4));
  show("mask_fn(k % 3 == 0 || k == q) & causal{}",
       mask_fn([](std::int64_t, std::int64_t, std::int64_t q, std::int64_t k) { return k % 3 == 0 || k == q; }) &
           causal{});
}
