# How every test is registered with CTest, in one place (see docs/layout.md, "Tests").
#
# Names: <module>.<suite>.<case> for GoogleTest cases (one CTest test per case, discovered
# from the binary after it is built), <module>.<suite> for a Python or shell suite (one CTest
# test per file: its fixtures start servers or boot guests once for the whole file).
# Labels: the tier (unit, integration, e2e, fuzz), which scripts/test.sh selects on.
include(GoogleTest)

# What every Python suite gets: the binaries under test, and smaller sizes under sanitizers.
set(KILN_TEST_ENV
  "KILN_IMG=$<TARGET_FILE:kiln-img>"
  "KILN_IO=$<TARGET_FILE:kiln-io>"
  "KILN_NBD=$<TARGET_FILE:kiln-nbd>"
  "KILN_FS=$<TARGET_FILE:kiln-fs>"
  "KILN_FUSE_DEV=$<TARGET_FILE:kiln-fuse-dev>"
  "KILN_NET=$<TARGET_FILE:kiln-net>"
  "KILN_SPAWN=$<TARGET_FILE:kiln-spawn>"
  "KILN_GUEST_BUILDER=${PROJECT_SOURCE_DIR}/tests/guest/build.sh"
  "KILN_GUEST_DIR=${PROJECT_BINARY_DIR}/tests/e2e/guest"
  "PYTHONDONTWRITEBYTECODE=1"
)
if(KILN_SANITIZE)
  # Instrumented binaries are several times slower: smaller images and fewer operations.
  list(APPEND KILN_TEST_ENV "KILN_TEST_SCALE=0.5" "KILN_SANITIZED=1"
       "ASAN_OPTIONS=abort_on_error=0:detect_leaks=1" "UBSAN_OPTIONS=print_stacktrace=1")
endif()

# kiln_gtest(TARGET MODULE LABEL [TIMEOUT seconds])
# One CTest test per GoogleTest case of TARGET, named MODULE.<Suite>.<Case>.
function(kiln_gtest target module label)
  set(timeout 120)
  if(ARGC GREATER 3)
    set(timeout ${ARGV3})
  endif()
  gtest_discover_tests(${target} TEST_PREFIX "${module}." DISCOVERY_TIMEOUT 60
                       PROPERTIES LABELS ${label} TIMEOUT ${timeout})
endfunction()

# kiln_suite(<module>.<suite> LABEL tier
#            PYTEST file [SELECT pytest-k-expression] | COMMAND command...
#            [TIMEOUT seconds] [COST seconds] [ENV VAR=value...]
#            [FIXTURES_REQUIRED fixture...])
# A Python suite (FILE relative to the calling directory) run by Debian's python3 -m pytest
# with tests/ as its root (tests/conftest.py puts the kilntest package on the path), or a
# shell suite given as COMMAND; both get KILN_TEST_ENV plus ENV. COST is about how many
# seconds the suite runs (the longer of the release and sanitizer tiers): CTest starts the
# costliest tests first (a fresh build has no timing history), so a long suite does not start
# last and run alone at the end. A suite without one still starts before the GoogleTest cases,
# which take milliseconds each.
function(kiln_suite name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "LABEL;PYTEST;SELECT;TIMEOUT;COST"
                        "COMMAND;ENV;FIXTURES_REQUIRED")
  if(NOT name MATCHES "^[a-z][a-z0-9]*\\.[a-z0-9_]+$" OR NOT arg_LABEL)
    message(FATAL_ERROR "kiln_suite(${name}): a <module>.<suite> name and a LABEL are required")
  endif()
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 1200)
  endif()
  if(arg_PYTEST)
    # A test still running at half the suite's timeout has every thread's traceback written to
    # stderr (pytest's faulthandler_timeout): CTest kills a suite at its timeout, and without
    # this a hang leaves nothing in the log to say where it was.
    math(EXPR dump_after "${arg_TIMEOUT} / 2")
    set(command ${KILN_SYSTEM_PYTHON3} -m pytest -q -rxXs -p no:cacheprovider
                -o faulthandler_timeout=${dump_after}
                --rootdir=${PROJECT_SOURCE_DIR}/tests ${CMAKE_CURRENT_SOURCE_DIR}/${arg_PYTEST})
    if(arg_SELECT)
      list(APPEND command -k "${arg_SELECT}")
    endif()
  elseif(arg_COMMAND)
    set(command ${arg_COMMAND})
  else()
    message(FATAL_ERROR "kiln_suite(${name}): PYTEST or COMMAND is required")
  endif()
  if(NOT arg_COST)
    set(arg_COST 5)
  endif()
  # Unbuffered: the progress a suite printed is in the log also when CTest kills it.
  # KILN_TEST_NAME and KILN_TEST_REPORT_DIR: each Python suite's time report (tests/conftest.py).
  set(env ${KILN_TEST_ENV} PYTHONUNBUFFERED=1 KILN_TEST_NAME=${name}
      KILN_TEST_REPORT_DIR=${PROJECT_BINARY_DIR}/test-reports ${arg_ENV})
  add_test(NAME ${name} COMMAND ${command})
  set_tests_properties(${name} PROPERTIES
    LABELS ${arg_LABEL}
    ENVIRONMENT "${env}"
    TIMEOUT ${arg_TIMEOUT}
    COST ${arg_COST})
  if(arg_FIXTURES_REQUIRED)
    set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED "${arg_FIXTURES_REQUIRED}")
  endif()
endfunction()
