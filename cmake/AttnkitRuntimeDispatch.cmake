# attnkit_enable_runtime_dispatch(<target>)
#
# Compiles attnkit's kernels three times into <target>, for baseline x86-64 (SSE2),
# x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), and makes attnkit::attention() pick one
# at run time from cpuid/XCR0 (capped by the ATTNKIT_ISA environment variable:
# sse2 | avx2 | avx512). <target>'s own sources can then be built for baseline x86-64
# and still run AVX-512 code where the CPU has it.
#
# Every translation unit of <target> that includes attnkit sees ATTNKIT_RUNTIME_DISPATCH=1
# and never instantiates a kernel itself; the three generated files do. <target> may be an
# executable, a library or an OBJECT library, and may be defined in another directory.
# Works from the build tree (add_subdirectory) and from an installed package.
#
# The three files are compiled with -O2 whatever the consumer's build type, so kernels stay
# optimised in Debug builds; a caller may set ATTNKIT_DISPATCH_OPTIMIZE (e.g. -O1 for a
# sanitizer build, where -O2 makes these the longest compiles by far) before the call.
if(CMAKE_VERSION VERSION_LESS 3.18)  # set_source_files_properties(TARGET_DIRECTORY)
  message(FATAL_ERROR "attnkit_enable_runtime_dispatch needs CMake 3.18 or newer")
endif()

function(attnkit_enable_runtime_dispatch target)
  if(NOT TARGET ${target})
    message(FATAL_ERROR "attnkit_enable_runtime_dispatch: no target named '${target}'")
  endif()
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x64|i[3-6]86)$")
    message(FATAL_ERROR "attnkit_enable_runtime_dispatch: x86-64 only (CMAKE_SYSTEM_PROCESSOR is "
                        "'${CMAKE_SYSTEM_PROCESSOR}'); use static mode (just link attnkit::attnkit)")
  endif()
  get_target_property(_done ${target} ATTNKIT_RUNTIME_DISPATCH)
  if(_done)
    return()  # already enabled: adding the entry points twice would define them twice
  endif()
  set_property(TARGET ${target} PROPERTY ATTNKIT_RUNTIME_DISPATCH ON)

  # The template sits next to this file, in the source tree or in the installed package.
  # (CMAKE_CURRENT_FUNCTION_LIST_DIR, not a variable set at include time: that variable
  # would only exist in the directory that included this file, not in the caller's.)
  set(_template "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/attnkit_isa_entry.cpp.in")
  set(_isas sse2 avx2 avx512)
  set(_arch_sse2 "xsimd::sse2")
  set(_arch_avx2 "xsimd::fma3<xsimd::avx2>")
  set(_arch_avx512 "xsimd::avx512bw")
  # The -mno-* flags undo ISA extensions the consumer may have enabled for all its sources
  # with explicit -m flags (a later -march does not undo those).
  set(_flags_sse2 "-march=x86-64;-mtune=generic;-mno-avx")
  set(_flags_avx2 "-march=x86-64-v3;-mtune=generic;-mno-avx512f")
  set(_flags_avx512 "-march=x86-64-v4;-mtune=generic")
  set(_gen_dir "${CMAKE_CURRENT_BINARY_DIR}/attnkit_dispatch/${target}")
  foreach(_isa IN LISTS _isas)
    set(ATTNKIT_ISA ${_isa})
    set(ATTNKIT_ISA_ARCH "${_arch_${_isa}}")
    string(REPLACE ";" " " ATTNKIT_ISA_FLAGS "${_flags_${_isa}}")
    set(_src "${_gen_dir}/isa_${_isa}.cpp")
    configure_file("${_template}" "${_src}" @ONLY)
    target_sources(${target} PRIVATE "${_src}")
    # Kernels stay optimised even in Debug builds of the consumer.
    set(_opt -O2)
    if(DEFINED ATTNKIT_DISPATCH_OPTIMIZE)
      set(_opt "${ATTNKIT_DISPATCH_OPTIMIZE}")
    endif()
    set_source_files_properties("${_src}" TARGET_DIRECTORY ${target} PROPERTIES
      COMPILE_OPTIONS "${_flags_${_isa}};${_opt}")
  endforeach()
  target_compile_definitions(${target} PRIVATE ATTNKIT_RUNTIME_DISPATCH=1)
endfunction()
