# Checks what including a public entry header alone instantiates (cmake -P script, run by ctest):
# g++ compiles a one-line translation unit with -fkeep-inline-functions, so every inline function
# the header defines is emitted and, with it, every template specialization its body uses; none of
# the symbols the object then defines may match FORBIDDEN. A non-template function that records
# autograd ops or multiplies Eigen matrices makes every program that includes the header compile
# those templates, used or not (the training and LLM paths cost `<nwc/nwc.hpp>` about 6.5 s of
# `g++ -fsyntax-only`, 15.1 -> 8.6 s in a fast hour, before they became templates instantiated on
# use; docs/bench/headers.md).
#
# Inputs (-D): COMPILER (g++: -fkeep-inline-functions is GCC's), NM, INCLUDE_DIR (nwc's include/),
# DEPENDENCY_INCLUDES (the folders of Eigen, xsimd and nlohmann-json, separated by '|'), HEADER (e.g. nwc/nwc.hpp), WORK_DIR (scratch folder), FORBIDDEN (CMake regular expressions on
# demangled symbol names, separated by '|'; so none may use '|' itself).
cmake_minimum_required(VERSION 3.25)

foreach(required COMPILER NM INCLUDE_DIR HEADER WORK_DIR FORBIDDEN)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "check_entry_instantiations.cmake: -D${required}=... is required")
  endif()
endforeach()

file(MAKE_DIRECTORY ${WORK_DIR})
set(entry ${WORK_DIR}/entry.cpp)
set(object ${WORK_DIR}/entry.o)
file(WRITE ${entry} "#include <${HEADER}>\n")
set(include_flags -I${INCLUDE_DIR})
string(REPLACE "|" ";" dependency_includes "${DEPENDENCY_INCLUDES}")
foreach(folder IN LISTS dependency_includes)
  list(APPEND include_flags -isystem ${folder})
endforeach()
execute_process(COMMAND ${COMPILER} -std=c++20 -O0 -fkeep-inline-functions ${include_flags} -c ${entry} -o ${object}
                RESULT_VARIABLE result ERROR_VARIABLE errors)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "compiling a translation unit of <${HEADER}> failed (${result}):\n${errors}")
endif()
execute_process(COMMAND ${NM} -C --defined-only ${object} RESULT_VARIABLE result OUTPUT_VARIABLE symbols ERROR_VARIABLE errors)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "listing the symbols of ${object} failed (${result}):\n${errors}")
endif()
string(REPLACE "\n" ";" symbol_lines "${symbols}")
list(LENGTH symbol_lines symbol_count)
if(symbol_count LESS 1000)
  # The check means something only if the inline functions were emitted (thousands of them).
  message(FATAL_ERROR "<${HEADER}> emitted only ${symbol_count} symbols: -fkeep-inline-functions had no effect")
endif()

string(REPLACE "|" ";" forbidden "${FORBIDDEN}")
set(found "")
foreach(pattern IN LISTS forbidden)
  foreach(line IN LISTS symbol_lines)
    if(line MATCHES "${pattern}")
      string(REGEX REPLACE "^[0-9a-f]+ . " "" name "${line}")
      string(SUBSTRING "${name}" 0 160 name)
      list(APPEND found "  ${pattern}: ${name}")
      break()
    endif()
  endforeach()
endforeach()
if(found)
  list(JOIN found "\n" found_text)
  message(FATAL_ERROR "including <${HEADER}> alone instantiates what only a program using it should "
                      "(first match of each pattern):\n${found_text}")
endif()
list(LENGTH forbidden forbidden_count)
message(STATUS "<${HEADER}> alone: ${symbol_count} symbols emitted, none matching the ${forbidden_count} forbidden patterns")
