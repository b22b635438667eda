# Packaging tests (owned by packaging/CI; included from tests/CMakeLists.txt).
#
#   packaging.find_package      install attnkit into a prefix, build + run a find_package() consumer
#   packaging.add_subdirectory  build + run a consumer that add_subdirectory()s attnkit
#   packaging.odr_rd_run        a runtime-dispatch target (built with -march=native on top)
#   packaging.odr_rd_nm         nm/objdump of its per-ISA objects (check_weak_symbols.sh)
#   packaging.static_two_isa    two static-mode TUs, baseline and -mavx2 -mfma, in one program
#   packaging.static_two_isa_nm nm/objdump of those two objects
#   packaging.odr_checker_selftest  the nm checker catches a planted offender
# All carry the label `packaging`. Consumers are built with this build's compiler, build
# type and CMAKE_CXX_FLAGS. In a sanitizer build (-fsanitize in CMAKE_CXX_FLAGS) the two
# consumer tests also carry the label `slow` (about 80 s each there; packaging does not
# depend on sanitizers) and neither the runtime-dispatch ODR target (its per-ISA objects are
# -O2 whatever the build type) nor the static two-ISA program is built: the Release builds
# check them.
include_guard(GLOBAL)

set(_attnkit_pkg_sanitized OFF)
if(CMAKE_CXX_FLAGS MATCHES "-fsanitize")
  set(_attnkit_pkg_sanitized ON)
endif()

set(_attnkit_pkg_dir "${CMAKE_CURRENT_LIST_DIR}")
set(_attnkit_pkg_work "${CMAKE_CURRENT_BINARY_DIR}/packaging")

foreach(_mode install add_subdirectory)
  if(_mode STREQUAL "install")
    set(_name packaging.find_package)
  else()
    set(_name packaging.add_subdirectory)
  endif()
  add_test(NAME ${_name}
    COMMAND "${CMAKE_COMMAND}"
      -DMODE=${_mode}
      "-DSOURCE_DIR=${PROJECT_SOURCE_DIR}"
      "-DWORK_DIR=${_attnkit_pkg_work}/${_mode}"
      "-DGENERATOR=${CMAKE_GENERATOR}"
      "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}"
      "-DBUILD_TYPE=$<CONFIG>"
      "-DCXX_FLAGS=${CMAKE_CXX_FLAGS}"
      -DJOBS=2
      -P "${_attnkit_pkg_dir}/run_consumer.cmake")
  set_tests_properties(${_name} PROPERTIES LABELS packaging PROCESSORS 2 TIMEOUT 900)
  if(_attnkit_pkg_sanitized)
    set_property(TEST ${_name} APPEND PROPERTY LABELS slow)
  endif()
endforeach()

# --- ODR / ISA ----------------------------------------------------------------------------
find_program(ATTNKIT_BASH bash)
find_program(ATTNKIT_GNU_NM nm)
find_program(ATTNKIT_CXXFILT c++filt)
find_program(ATTNKIT_OBJDUMP objdump)
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native ATTNKIT_PKG_HAVE_MARCH_NATIVE)

set(_attnkit_pkg_can_nm ON)
foreach(_tool ATTNKIT_BASH ATTNKIT_GNU_NM ATTNKIT_CXXFILT ATTNKIT_OBJDUMP)
  if(NOT ${_tool})
    message(STATUS "attnkit packaging: ${_tool} not found, ODR nm tests disabled")
    set(_attnkit_pkg_can_nm OFF)
  endif()
endforeach()

# Neither ODR program is built in sanitizer builds: what they check (which symbols each
# ISA's object defines) does not depend on the sanitizers, and the Release builds check it;
# the runtime-dispatch objects are -O2 whatever the build type, and under ASan+UBSan the
# static program's three objects take 45 s to compile (Zen 4).
if(NOT _attnkit_pkg_sanitized)
  # Runtime dispatch into an OBJECT library, so the per-ISA objects have known paths. Its
  # own sources get -march=native: the helper's per-ISA flags must override the consumer's.
  add_library(attnkit_pkg_odr_rd OBJECT "${_attnkit_pkg_dir}/consumer/rd_main.cpp")
  target_include_directories(attnkit_pkg_odr_rd PRIVATE "${_attnkit_pkg_dir}/common")
  target_link_libraries(attnkit_pkg_odr_rd PUBLIC attnkit::attnkit)
  if(ATTNKIT_PKG_HAVE_MARCH_NATIVE)
    target_compile_options(attnkit_pkg_odr_rd PRIVATE -march=native)
  endif()
  attnkit_enable_runtime_dispatch(attnkit_pkg_odr_rd)
  attnkit_strict_warnings(attnkit_pkg_odr_rd)
  add_executable(attnkit_pkg_odr_rd_app)
  target_link_libraries(attnkit_pkg_odr_rd_app PRIVATE attnkit_pkg_odr_rd)
  add_test(NAME packaging.odr_rd_run COMMAND attnkit_pkg_odr_rd_app)
  set_tests_properties(packaging.odr_rd_run PROPERTIES LABELS packaging)

  # Static mode: one TU at the baseline, one with -mavx2 -mfma.
  add_library(attnkit_pkg_static_objs OBJECT
    "${_attnkit_pkg_dir}/odr/static_main.cpp"
    "${_attnkit_pkg_dir}/odr/static_tu_sse2.cpp"
    "${_attnkit_pkg_dir}/odr/static_tu_avx2.cpp")
  target_include_directories(attnkit_pkg_static_objs PRIVATE "${_attnkit_pkg_dir}/common")
  target_link_libraries(attnkit_pkg_static_objs PUBLIC attnkit::attnkit)
  set_source_files_properties("${_attnkit_pkg_dir}/odr/static_tu_avx2.cpp" TARGET_DIRECTORY attnkit_pkg_static_objs
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  attnkit_strict_warnings(attnkit_pkg_static_objs)
  add_executable(attnkit_pkg_static_two_isa)
  target_link_libraries(attnkit_pkg_static_two_isa PRIVATE attnkit_pkg_static_objs)
  add_test(NAME packaging.static_two_isa COMMAND attnkit_pkg_static_two_isa)
  set_tests_properties(packaging.static_two_isa PROPERTIES LABELS packaging)
endif()

if(_attnkit_pkg_can_nm)
  set(_nm_env "NM=${ATTNKIT_GNU_NM}" "CXXFILT=${ATTNKIT_CXXFILT}" "OBJDUMP=${ATTNKIT_OBJDUMP}")
  if(TARGET attnkit_pkg_odr_rd)
    add_test(NAME packaging.odr_rd_nm
      COMMAND "${ATTNKIT_BASH}" "${_attnkit_pkg_dir}/check_weak_symbols.sh" strict
        "$<JOIN:$<TARGET_OBJECTS:attnkit_pkg_odr_rd>,|>" "sse2,avx2,avx512")
    set_tests_properties(packaging.odr_rd_nm PROPERTIES LABELS packaging ENVIRONMENT "${_nm_env}")
  endif()
  if(TARGET attnkit_pkg_static_objs)
    add_test(NAME packaging.static_two_isa_nm
      COMMAND "${ATTNKIT_BASH}" "${_attnkit_pkg_dir}/check_weak_symbols.sh" unsafe-only
        "$<JOIN:$<TARGET_OBJECTS:attnkit_pkg_static_objs>,|>" "sse2,avx2")
    set_tests_properties(packaging.static_two_isa_nm PROPERTIES LABELS packaging ENVIRONMENT "${_nm_env}")
  endif()
endif()

# The checker must catch a planted offender (an un-namespaced inline function in a baseline
# and an AVX2 object): the test passes when the expected errors are printed.
add_library(attnkit_pkg_odr_selftest OBJECT
  "${_attnkit_pkg_dir}/odr/selftest_sse2.cpp" "${_attnkit_pkg_dir}/odr/selftest_avx2.cpp")
set_source_files_properties("${_attnkit_pkg_dir}/odr/selftest_avx2.cpp" TARGET_DIRECTORY attnkit_pkg_odr_selftest
  PROPERTIES COMPILE_OPTIONS "-O2;-mavx2;-mfma")
set_source_files_properties("${_attnkit_pkg_dir}/odr/selftest_sse2.cpp" TARGET_DIRECTORY attnkit_pkg_odr_selftest
  PROPERTIES COMPILE_OPTIONS "-O2")
if(_attnkit_pkg_can_nm)
  add_test(NAME packaging.odr_checker_selftest
    COMMAND "${ATTNKIT_BASH}" "${_attnkit_pkg_dir}/check_weak_symbols.sh" unsafe-only
      "$<JOIN:$<TARGET_OBJECTS:attnkit_pkg_odr_selftest>,|>" "sse2,avx2")
  set_tests_properties(packaging.odr_checker_selftest PROPERTIES LABELS packaging ENVIRONMENT "${_nm_env}"
    PASS_REGULAR_EXPRESSION "ERROR +\\(a\\) selftest_avx2[^\n]*uses v[^\n]*selftest_scale.*ERROR +\\(b\\)[^\n]*selftest_scale.*FAILED")
endif()
