# install() and export() under the nwc:: namespace, so find_package(nwc 0.1 CONFIG) works.
include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/nwc DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS nwc EXPORT nwcTargets)
install(EXPORT nwcTargets NAMESPACE nwc:: DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/nwc)
export(EXPORT nwcTargets NAMESPACE nwc:: FILE ${PROJECT_BINARY_DIR}/nwcTargets.cmake)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/nwcConfig.cmake.in
  ${PROJECT_BINARY_DIR}/nwcConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/nwc)
# The library is header-only, so one version file fits every architecture.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/nwcConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_SOURCE_DIR}/cmake/nwc_dependencies.cmake ${PROJECT_BINARY_DIR}/nwcConfig.cmake ${PROJECT_BINARY_DIR}/nwcConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/nwc)
