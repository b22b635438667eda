# Finds xsimd (>= 8.1) and repairs Debian's package: its exported target `xsimd` lists
# `xtl` as a link library without finding it, so linking fails with "cannot find -lxtl"
# unless xtl-dev happens to be installed (toolchain.md). attnkit only needs xsimd's headers.
if(NOT TARGET xsimd)
  find_package(xsimd 8.1 REQUIRED)
endif()
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_attnkit_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_attnkit_xsimd_libs)
    list(REMOVE_ITEM _attnkit_xsimd_libs xtl)
    set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${_attnkit_xsimd_libs}")
  endif()
endif()
