# tandem_add_module(NAME SOURCES ... PUBLIC_DEPS ... PRIVATE_DEPS ...)
# Builds tandem_<NAME> with alias tandem::<NAME>. Only <NAME>/include is exported, so
# another module sees this one's public headers and nothing else.
function(tandem_add_module name)
  cmake_parse_arguments(M "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(tandem_${name} STATIC ${M_SOURCES})
  add_library(tandem::${name} ALIAS tandem_${name})
  target_include_directories(tandem_${name}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(tandem_${name} PUBLIC ${M_PUBLIC_DEPS} PRIVATE ${M_PRIVATE_DEPS})
  tandem_warnings(tandem_${name})
  if(TANDEM_TEST_HOOKS)
    target_compile_definitions(tandem_${name} PUBLIC TANDEM_TEST_HOOKS=1)
  endif()
endfunction()

function(tandem_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(TANDEM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
