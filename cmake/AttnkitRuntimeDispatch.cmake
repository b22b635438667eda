# attnkit_enable_runtime_dispatch(<target>)
#
# Compiles attnkit's kernels three times into <target>, for baseline x86-64 (SSE2),
# x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), and makes attnkit::attention() pick one
# at run time from cpuid/XCR0 (capped by the ATTNKIT_ISA environment variable:
# sse2 | avx2 | avx512). <target>'s own sources can then be built for baseline x86-64
# and still run AVX-512 code where the CPU has it.
#
# Every translation unit of <target> that includes attnkit sees ATTNKIT_RUNTIME_DISPATCH=1
# and never instantiates a kernel itself; the three generated files do.
set(_ATTNKIT_RD_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(attnkit_enable_runtime_dispatch target)
  set(_isas sse2 avx2 avx512)
  set(_arch_sse2 "xsimd::sse2")
  set(_arch_avx2 "xsimd::fma3<xsimd::avx2>")
  set(_arch_avx512 "xsimd::avx512bw")
  # -mno-avx undoes any -mavx*/-march the consumer set globally for its own sources.
  set(_flags_sse2 "-march=x86-64;-mtune=generic;-mno-avx")
  set(_flags_avx2 "-march=x86-64-v3;-mtune=generic")
  set(_flags_avx512 "-march=x86-64-v4;-mtune=generic")
  set(_gen_dir "${CMAKE_CURRENT_BINARY_DIR}/attnkit_dispatch/${target}")
  foreach(_isa IN LISTS _isas)
    set(ATTNKIT_ISA ${_isa})
    set(ATTNKIT_ISA_ARCH "${_arch_${_isa}}")
    string(REPLACE ";" " " ATTNKIT_ISA_FLAGS "${_flags_${_isa}}")
    set(_src "${_gen_dir}/isa_${_isa}.cpp")
    configure_file("${_ATTNKIT_RD_DIR}/attnkit_isa_entry.cpp.in" "${_src}" @ONLY)
    target_sources(${target} PRIVATE "${_src}")
    # Kernels stay optimised even in Debug builds of the consumer.
    set_source_files_properties("${_src}" TARGET_DIRECTORY ${target} PROPERTIES
      COMPILE_OPTIONS "${_flags_${_isa}};-O2")
  endforeach()
  target_compile_definitions(${target} PRIVATE ATTNKIT_RUNTIME_DISPATCH=1)
endfunction()
