# What every installed binary gets, in one place: the generated version header, an install
# rule (bin/ for tools a user runs on their own files, sbin/ for what changes the host and
# needs root), a man page generated from its --help and --version text by help2man, and its
# bash completion (packaging/completions/kiln.bash, which reads the binary's --help).
include(GNUInstallDirs)

configure_file(${CMAKE_CURRENT_LIST_DIR}/version.h.in
               ${PROJECT_BINARY_DIR}/generated/kiln/version.h @ONLY)
add_library(kiln_version INTERFACE)
target_include_directories(kiln_version INTERFACE ${PROJECT_BINARY_DIR}/generated)

find_program(KILN_HELP2MAN help2man REQUIRED)  # Debian package help2man
find_program(KILN_GZIP gzip REQUIRED)

# kiln_program(TARGET SECTION 1|8 PACKAGE NAME SUMMARY "one line for the man page's NAME")
# Section 8 (system administration) installs into sbin/, section 1 into bin/. PACKAGE is the
# Debian package (CPack component) it goes into: see packaging/CMakeLists.txt.
function(kiln_program target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "SECTION;PACKAGE;SUMMARY" "")
  if(NOT arg_SECTION MATCHES "^[18]$" OR NOT arg_SUMMARY OR NOT arg_PACKAGE)
    message(FATAL_ERROR "kiln_program(${target}): SECTION 1 or 8, PACKAGE and SUMMARY are required")
  endif()
  target_link_libraries(${target} PRIVATE kiln_version)
  if(arg_SECTION STREQUAL "8")
    set(dir ${CMAKE_INSTALL_SBINDIR})
  else()
    set(dir ${CMAKE_INSTALL_BINDIR})
  endif()
  install(TARGETS ${target} RUNTIME DESTINATION ${dir} COMPONENT ${arg_PACKAGE})

  # The page is made from the binary just built, so it cannot drift from its options.
  # gzip -n: no name or time stamp inside, so that the package is reproducible.
  set(page ${PROJECT_BINARY_DIR}/man/${target}.${arg_SECTION})
  add_custom_command(OUTPUT ${page}.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
    COMMAND ${KILN_HELP2MAN} --no-info --section=${arg_SECTION} --name=${arg_SUMMARY}
            --output=${page} $<TARGET_FILE:${target}>
    COMMAND ${KILN_GZIP} -9nf ${page}
    DEPENDS ${target}
    COMMENT "Man page ${target}(${arg_SECTION})"
    VERBATIM)
  add_custom_target(${target}-man ALL DEPENDS ${page}.gz)
  install(FILES ${page}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man${arg_SECTION}
          COMPONENT ${arg_PACKAGE})
  # bash-completion looks a command's completion up by the command's name.
  install(FILES ${PROJECT_SOURCE_DIR}/packaging/completions/kiln.bash
          DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME ${target}
          COMPONENT ${arg_PACKAGE})
  set_property(GLOBAL APPEND PROPERTY KILN_PROGRAMS ${target})
endfunction()
