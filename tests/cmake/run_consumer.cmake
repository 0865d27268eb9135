# Configures, builds and runs one consumer project of tests/cmake/ (cmake -P script, run by ctest).
#
# Inputs (-D): WAY (add_subdirectory, fetch_content or find_package), WORK_DIR (scratch folder,
# emptied first), NWC_SOURCE_DIR, CONSUMER_GENERATOR, CONSUMER_MAKE_PROGRAM, CONSUMER_CXX_COMPILER,
# CONSUMER_CXX_COMPILER_LAUNCHER (may be empty), NWC_GIT_COMMIT (fetch_content only).
cmake_minimum_required(VERSION 3.25)

foreach(required WAY WORK_DIR NWC_SOURCE_DIR CONSUMER_GENERATOR CONSUMER_CXX_COMPILER)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${required}=... is required")
  endif()
endforeach()

# Runs a command, echoing it, and stops the script with its output if it fails.
function(run_step description)
  message(STATUS "== ${description}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result COMMAND_ECHO STDOUT)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer ${WAY}: ${description} failed (${result})")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# The consumer is built plainly: no build type (so no optimization), no -march, no sanitizer, and
# none of nwc's warnings flags, as a user's project would.
set(toolchain -G ${CONSUMER_GENERATOR} -DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER})
if(CONSUMER_MAKE_PROGRAM)
  list(APPEND toolchain -DCMAKE_MAKE_PROGRAM=${CONSUMER_MAKE_PROGRAM})
endif()
if(CONSUMER_CXX_COMPILER_LAUNCHER)
  list(APPEND toolchain -DCMAKE_CXX_COMPILER_LAUNCHER=${CONSUMER_CXX_COMPILER_LAUNCHER})
endif()
# The user package registry could hold some other nwc; only what this script provides may be found.
list(APPEND toolchain -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)

set(consumer_options "")
if(WAY STREQUAL "add_subdirectory")
  list(APPEND consumer_options -DNWC_SOURCE_DIR=${NWC_SOURCE_DIR})
elseif(WAY STREQUAL "fetch_content")
  if(NOT NWC_GIT_COMMIT MATCHES "^[0-9a-f]+$")
    message(FATAL_ERROR "consumer fetch_content: NWC_GIT_COMMIT must be a commit hash, not '${NWC_GIT_COMMIT}'")
  endif()
  list(APPEND consumer_options -DNWC_GIT_REPOSITORY=file://${NWC_SOURCE_DIR} -DNWC_GIT_COMMIT=${NWC_GIT_COMMIT})
elseif(WAY STREQUAL "find_package")
  # Install only the library (no tests, tools or CUDA), then delete the build tree so the consumer
  # can only see the installed copy.
  set(prefix ${WORK_DIR}/prefix)
  run_step("configure nwc for installation" ${CMAKE_COMMAND} -S ${NWC_SOURCE_DIR} -B ${WORK_DIR}/nwc-build ${toolchain}
    -DCMAKE_INSTALL_PREFIX=${prefix} -DNWC_INSTALL=ON -DNWC_BUILD_TESTS=OFF -DNWC_BUILD_BENCH=OFF
    -DNWC_BUILD_EXAMPLES=OFF -DNWC_BUILD_TOOLS=OFF -DNWC_ENABLE_CUDA=OFF)
  run_step("build nwc" ${CMAKE_COMMAND} --build ${WORK_DIR}/nwc-build)
  run_step("install nwc" ${CMAKE_COMMAND} --install ${WORK_DIR}/nwc-build)
  file(REMOVE_RECURSE ${WORK_DIR}/nwc-build)
  list(APPEND consumer_options -DCMAKE_PREFIX_PATH=${prefix} -DNWC_EXPECTED_PREFIX=${prefix})
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown WAY '${WAY}'")
endif()

get_filename_component(consumer_source ${CMAKE_CURRENT_LIST_DIR}/${WAY} ABSOLUTE)
set(consumer_build ${WORK_DIR}/build)
run_step("configure the ${WAY} consumer" ${CMAKE_COMMAND} -S ${consumer_source} -B ${consumer_build} ${toolchain} ${consumer_options})
run_step("build the ${WAY} consumer" ${CMAKE_COMMAND} --build ${consumer_build})

set(program ${consumer_build}/consumer${CMAKE_EXECUTABLE_SUFFIX})
if(NOT EXISTS ${program})  # multi-config generators put it in a per-configuration folder
  file(GLOB_RECURSE program ${consumer_build}/*/consumer${CMAKE_EXECUTABLE_SUFFIX})
endif()
run_step("run the ${WAY} consumer" ${program})
