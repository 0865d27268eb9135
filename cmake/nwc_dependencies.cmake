# The dependencies of the nwc target, found the same way for nwc's own build and for consumers of
# an installed nwc (nwcConfig.cmake includes this file).
#
# Inside nwcConfig.cmake, find_dependency() lets find_package(nwc) report a missing dependency as
# "nwc not found because ...". nwc's own CMakeLists.txt sets NWC_DEPENDENCIES_REQUIRED, because
# there find_dependency() would silently return() from this file and the configure would fail
# later with an obscure "target Eigen3::Eigen not found".
include(CMakeFindDependencyMacro)

macro(_nwc_find_dependency)
  if(NWC_DEPENDENCIES_REQUIRED)
    find_package(${ARGN} REQUIRED)
  else()
    find_dependency(${ARGN})
  endif()
endmacro()

_nwc_find_dependency(Eigen3 3.4 NO_MODULE)
_nwc_find_dependency(xsimd 8)
# Debian's xsimd 8.1 config names a library "xtl" in its link interface although xsimd needs none
# of it and Debian ships no xtl package; an empty target keeps the linker from looking for -lxtl.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED GLOBAL)
endif()
_nwc_find_dependency(nlohmann_json 3.10)
_nwc_find_dependency(Threads)
