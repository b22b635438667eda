# Driven by packaging.cmake through `cmake -P`: builds tests/packaging/consumer against
# attnkit and runs it.
#
#   -DMODE=install           configure + build + `cmake --install` attnkit (tests, benchmarks,
#                            examples OFF) into a staging prefix, move the prefix elsewhere
#                            (the package must be relocatable), then find_package() it
#   -DMODE=add_subdirectory  the consumer add_subdirectory()s the attnkit source tree
#   -DSOURCE_DIR=  attnkit's source tree       -DWORK_DIR=  scratch directory (wiped first)
#   -DGENERATOR= -DCXX_COMPILER= -DBUILD_TYPE= -DCXX_FLAGS=  passed to every configure
#   -DJOBS=  parallel build jobs
cmake_minimum_required(VERSION 3.21)

foreach(_v MODE SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${_v} OR "${${_v}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${_v}= is required")
  endif()
endforeach()
if(NOT DEFINED JOBS)
  set(JOBS 2)
endif()

# run(<what> <command>...): runs a command, echoing it, and stops the test if it fails.
function(run what)
  string(REPLACE ";" " " _cmd "${ARGN}")
  message(STATUS "[${MODE}] ${what}: ${_cmd}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${what} failed (${_rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
# Paths with spaces catch quoting mistakes in the package and the dispatch helper.
set(_consumer_build "${WORK_DIR}/consumer build")
set(_common_args -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}"
                 "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
set(_consumer_args
  "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF" "-DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF")

if(MODE STREQUAL "install")
  set(_build "${WORK_DIR}/attnkit-build")
  set(_stage "${WORK_DIR}/stage")
  set(_prefix "${WORK_DIR}/install prefix")
  run("configure attnkit" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${_build}" ${_common_args}
      -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCHMARKS=OFF -DATTNKIT_BUILD_EXAMPLES=OFF
      "-DCMAKE_INSTALL_PREFIX=${_stage}")
  run("build attnkit" "${CMAKE_COMMAND}" --build "${_build}" --parallel ${JOBS})
  run("install attnkit" "${CMAKE_COMMAND}" --install "${_build}")
  file(RENAME "${_stage}" "${_prefix}")
  file(GLOB_RECURSE _installed RELATIVE "${_prefix}" "${_prefix}/*")
  list(LENGTH _installed _n)
  message(STATUS "[${MODE}] ${_n} files installed")
  foreach(_f include/attnkit/attnkit.hpp include/attnkit/dispatch/isa_entry.ipp
             share/cmake/attnkit/attnkitConfig.cmake share/cmake/attnkit/attnkitConfigVersion.cmake
             share/cmake/attnkit/attnkitTargets.cmake share/cmake/attnkit/AttnkitRuntimeDispatch.cmake
             share/cmake/attnkit/attnkit_isa_entry.cpp.in)
    if(NOT EXISTS "${_prefix}/${_f}")
      message(FATAL_ERROR "[${MODE}] not installed: ${_f}")
    endif()
  endforeach()
  list(APPEND _consumer_args -DATTNKIT_CONSUMER_MODE=find_package "-DCMAKE_PREFIX_PATH=${_prefix}"
       "-DATTNKIT_EXPECTED_PREFIX=${_prefix}")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND _consumer_args -DATTNKIT_CONSUMER_MODE=add_subdirectory "-DATTNKIT_SOURCE_DIR=${SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE must be install or add_subdirectory")
endif()

run("configure consumer" "${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}/consumer" -B "${_consumer_build}"
    ${_common_args} ${_consumer_args})
run("build consumer" "${CMAKE_COMMAND}" --build "${_consumer_build}" --parallel ${JOBS})
run("run consumer" "${_consumer_build}/consumer")
run("run consumer_rd" "${_consumer_build}/consumer_rd")
message(STATUS "[${MODE}] passed")
