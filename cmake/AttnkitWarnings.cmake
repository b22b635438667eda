# attnkit_strict_warnings(<target>): warnings as errors for attnkit's own targets (tests,
# benchmarks, examples). Never applied to the INTERFACE target: users choose their flags.
function(attnkit_strict_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror)
endfunction()
