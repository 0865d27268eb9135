# Compile and link flags for nwc's own programs (tests, benchmarks, examples, tools). The nwc
# target itself carries none of these, so a consumer's flags stay its own.
add_library(nwc_project_options INTERFACE)

target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  # GCC 12 at -O2/-O3 reports impossible overlaps in memcpy calls inlined from libstdc++'s
  # std::string (`"a" + std::string(...)`, GCC bug 105651) and on paths a bounds check has already
  # cut off; none of them is real, so -Wrestrict is off there.
  target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
endif()
if(NWC_WERROR)
  target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(NWC_NATIVE)
  target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 12.3)
    # GCC 12.2's AVX-512 headers build "undefined" vectors as `__m512 __Y = __Y;`, which its own
    # -W(maybe-)uninitialized then reports in every Eigen kernel inlined into our code (GCC bug
    # 105593, fixed in 12.3): hundreds of warnings that are not ours, so these two are off there.
    target_compile_options(nwc_project_options INTERFACE
      $<$<COMPILE_LANGUAGE:CXX>:-Wno-uninitialized -Wno-maybe-uninitialized>)
  endif()
endif()
if(NWC_SANITIZE)
  # _GLIBCXX_ASSERTIONS adds bounds checks to std::vector/span operator[], which catch reads past
  # size() that ASan misses while they stay inside the allocation.
  target_compile_options(nwc_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer>)
  target_compile_definitions(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:_GLIBCXX_ASSERTIONS>)
  target_link_options(nwc_project_options INTERFACE $<$<LINK_LANGUAGE:CXX>:-fsanitize=address,undefined>)
endif()
if(NWC_SANITIZE_THREAD)
  if(NWC_SANITIZE)
    message(FATAL_ERROR "NWC_SANITIZE_THREAD and NWC_SANITIZE cannot be on in one tree (ThreadSanitizer and AddressSanitizer do not mix)")
  endif()
  target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread -fno-omit-frame-pointer>)
  target_link_options(nwc_project_options INTERFACE $<$<LINK_LANGUAGE:CXX>:-fsanitize=thread>)
endif()
target_compile_definitions(nwc_project_options INTERFACE NWC_DATA_DIR="${NWC_DATA_DIR}" NWC_CODEC_DIR="${PROJECT_SOURCE_DIR}/codecs")

if(NWC_ENABLE_CUDA)
  # nvcc: Eigen's CUDA support calls constexpr std::complex functions from device code, which nvcc
  # accepts only with --expt-relaxed-constexpr (Eigen's documented requirement), and Eigen 3.4
  # puts __host__ __device__ on defaulted constructors, which nvcc 12+ reports as warning 20012 on
  # every file. -Wpedantic is left out of the host compiler's flags because it warns about the
  # `# 1 "file"` line markers in nvcc's own generated code.
  target_compile_options(nwc_project_options INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -diag-suppress=20012 -Xcompiler=-Wall,-Wextra>)
  if(NWC_WERROR)
    target_compile_options(nwc_project_options INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
endif()

# A CUDA program of nwc's own: tests/test_*.cu and bench/bench_*.cu. The CUDA runtime is linked
# statically so the programs start on any machine with a driver, whatever toolkit is installed.
function(nwc_add_cuda_program target source)
  add_executable(${target} ${source})
  # CMake 3.25 does not know that nvcc 12+ has C++20 (CUDA_STANDARD 20 fails to configure), so
  # the flag is given directly.
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES "${NWC_CUDA_ARCHITECTURES}"
    CUDA_RUNTIME_LIBRARY Static)
  target_compile_options(${target} PRIVATE -std=c++20)
  target_link_libraries(${target} PRIVATE nwc::nwc nwc_project_options CUDA::cudart_static CUDA::cublas)
endfunction()

# Compiles `target` (NWC_UNITY) as `units` unity translation units of equal file counts: the
# header-only templates every file instantiates are then parsed, instantiated and optimized once
# per unit. The batch size follows the file count, so adding a file never adds a unit (a third
# unit of a few files cost nearly as much as a full one: docs/bench/headers.md).
function(nwc_unity_units target units)
  get_target_property(sources ${target} SOURCES)
  list(FILTER sources INCLUDE REGEX "\\.cpp$")
  list(LENGTH sources count)
  math(EXPR batch "(${count} + ${units} - 1) / ${units}")
  set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_MODE BATCH UNITY_BUILD_BATCH_SIZE ${batch})
endfunction()
