# attnkit_strict_warnings(<target>): warnings as errors for attnkit's own targets (tests,
# benchmarks, examples). Never applied to the INTERFACE target: users choose their flags.
function(attnkit_strict_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror)
  # g++ 12 reports its own AVX-512 intrinsics (built on _mm512_undefined_ps) as
  # -W(maybe-)uninitialized wherever they are inlined (GCC bug 105593, fixed in 13).
  # attnkit's headers avoid those intrinsics, but Eigen's AVX-512 GEMM uses them, so
  # targets that include Eigen under -march=native cannot build with -Werror otherwise.
  # The clang build keeps these warnings on.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE -Wno-error=maybe-uninitialized -Wno-error=uninitialized
                                             -Wno-maybe-uninitialized -Wno-uninitialized)
  endif()
endfunction()
