# Checks which nwc headers a public entry header pulls in (cmake -P script, run by ctest): the
# compiler lists the headers a one-line translation unit includes (-M; -MG so that third-party
# headers need not be found), and none of FORBIDDEN may be among them. <nwc/decode.hpp> must not
# parse an encoder, the autograd tape or training, and no nwc header may include <regex> (a
# command-line need): what keeps a program that includes only what it uses cheap to compile
# (issue 12; docs/bench/headers.md).
#
# Inputs (-D): COMPILER, INCLUDE_DIR (nwc's include/), HEADER (e.g. nwc/decode.hpp), WORK_DIR
# (scratch folder), and at least one of FORBIDDEN (paths under include/) and FORBIDDEN_STANDARD
# (standard headers, e.g. regex), each a list separated by '|'.
cmake_minimum_required(VERSION 3.25)

foreach(required COMPILER INCLUDE_DIR HEADER WORK_DIR)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "check_entry_includes.cmake: -D${required}=... is required")
  endif()
endforeach()
if("${FORBIDDEN}${FORBIDDEN_STANDARD}" STREQUAL "")
  message(FATAL_ERROR "check_entry_includes.cmake: -DFORBIDDEN=... or -DFORBIDDEN_STANDARD=... is required")
endif()

file(MAKE_DIRECTORY ${WORK_DIR})
set(entry ${WORK_DIR}/entry.cpp)
file(WRITE ${entry} "#include <${HEADER}>\n")
execute_process(COMMAND ${COMPILER} -std=c++20 -I${INCLUDE_DIR} -M -MG ${entry}
                RESULT_VARIABLE result OUTPUT_VARIABLE dependencies ERROR_VARIABLE errors)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "listing the headers of <${HEADER}> failed (${result}):\n${errors}")
endif()

string(REPLACE "|" ";" forbidden "${FORBIDDEN}")
string(REPLACE "|" ";" forbidden_standard "${FORBIDDEN_STANDARD}")
set(found "")
foreach(path IN LISTS forbidden)
  string(FIND "${dependencies}" "${INCLUDE_DIR}/${path}" position)
  if(NOT position EQUAL -1)
    list(APPEND found ${path})
  endif()
endforeach()
foreach(name IN LISTS forbidden_standard)
  # A standard header is listed by its path in the compiler's own include folder: .../<name>.
  if(dependencies MATCHES "/${name}[ \n\\]" OR dependencies MATCHES "/${name}$")
    list(APPEND found <${name}>)
    list(APPEND forbidden <${name}>)
  endif()
endforeach()
if(found)
  list(JOIN found ", " found_text)
  message(FATAL_ERROR "<${HEADER}> includes ${found_text}, which it must not (tests/CMakeLists.txt says why)")
endif()
string(REGEX MATCHALL "${INCLUDE_DIR}/nwc/[^ \n\\\\]+" nwc_headers "${dependencies}")
list(REMOVE_DUPLICATES nwc_headers)
list(LENGTH nwc_headers count)
list(LENGTH forbidden forbidden_count)
list(LENGTH forbidden_standard standard_count)
math(EXPR forbidden_count "${forbidden_count} + ${standard_count}")
message(STATUS "<${HEADER}> includes ${count} nwc headers, none of the ${forbidden_count} it must not")
