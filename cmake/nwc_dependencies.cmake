# The dependencies of the nwc target, found the same way for nwc's own build and for consumers of
# an installed nwc (nwcConfig.cmake includes this file).
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.4 NO_MODULE)
find_dependency(xsimd 8)
# Debian's xsimd 8.1 config names a library "xtl" in its link interface although xsimd needs none
# of it and Debian ships no xtl package; an empty target keeps the linker from looking for -lxtl.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED GLOBAL)
endif()
find_dependency(nlohmann_json 3.10)
find_dependency(Threads)
