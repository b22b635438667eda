#!/usr/bin/env bash
# check_weak_symbols.sh MODE OBJECTS EXPECT
#   MODE     strict | unsafe-only (see below)
#   OBJECTS  object files, separated by '|' (CMake's $<JOIN:$<TARGET_OBJECTS:t>,|>)
#   EXPECT   ISA labels that must be present, separated by ',' (e.g. sse2,avx2,avx512)
#
# ODR / ISA check of objects compiled for different ISAs (toolchain.md, "ODR / COMDAT
# pitfalls"; style.md H.1). An object's ISA label comes from its file name: *sse2.cpp.o,
# *avx2.cpp.o, *avx512.cpp.o; other objects are ignored. Weak code (nm class W, V or u in a
# text section: COMDAT) is merged by the linker with any same-named copy from other
# objects, whatever flags they were built with, and the first copy wins. Findings:
#  (a) a weak text symbol whose name involves neither an attnkit ISA namespace
#      (attnkit::isa_...) nor an xsimd arch tag: a translation unit built with other flags
#      (the user's own, or another ISA's) can emit the same symbol;
#  (b) a weak text symbol present in two objects of different ISA labels;
#      Compiler-generated helpers (__clang_call_terminate) are allowed if their code is
#      baseline x86-64;
#  (c) instructions above the label: %ymm/%zmm in sse2 objects, %zmm in avx2 objects; and
#      no %zmm at all in avx512 objects (the flags did not take effect). Always an error.
# A finding of (a) or (b) is UNSAFE when the copy compiled for the higher ISA contains
# instructions the lower one lacks (for (a): anything beyond baseline x86-64), so a caller
# built for the lower ISA may execute them. MODE strict fails on every finding (per-ISA
# translation units of runtime dispatch must hold nothing else); MODE unsafe-only fails on
# unsafe findings and (c), and prints the others as warnings.
set -euo pipefail
export LC_ALL=C

NM="${NM:-nm}"
CXXFILT="${CXXFILT:-c++filt}"
OBJDUMP="${OBJDUMP:-objdump}"

mode="${1:?mode}"
[[ "$mode" == strict || "$mode" == unsafe-only ]] || { echo "bad mode $mode"; exit 2; }
IFS='|' read -r -a objects <<<"${2:?objects}"
IFS=',' read -r -a expect <<<"${3:-}"

# Names that differ per ISA: an xsimd arch other than `generic` (shared by every ISA), or an
# attnkit ISA namespace.
distinct_re='attnkit::isa_|xsimd::(sse2|sse3|ssse3|sse4_1|sse4_2|fma3<|fma4|avx|avx2|avx512f|avx512cd|avx512dq|avx512bw|neon|neon64)([^_a-z0-9]|$)'
# Compiler-generated helpers that every translation unit emits identically; allowed as long
# as their code stays baseline x86-64 (checked).
compiler_helper_re='^(__clang_call_terminate)$'
# Instructions beyond baseline x86-64 (SSE2): VEX/EVEX encodings, BMI1/2, LZCNT, MOVBE,
# POPCNT, and the SSE3..SSE4.2 mnemonics that exist without a v prefix.
above_sse2_re='^(v|k)|^(andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|lzcnt|tzcnt|movbe|popcnt|crc32|lddqu|movddup|movs[hl]dup|h(add|sub)p[sd]|addsubp[sd]|pshufb|palignr|pabs[bwd]|psign[bwd]|phadd|phsub|pmaddubsw|pmulhrsw|ptest|pblendw|pblendvb|blendv?p[sd]|dpp[sd]|round[ps][sd]|insertps|extractps|pextr[bdq]|pinsr[bdq]|pmin[su][bdw]|pmax[su][bdw]|pmovsx|pmovzx|pmuldq|pmulld|pcmpeqq|pcmpgtq|packusdw|mpsadbw|phminposuw|movntdqa|pcmp[ei]str[im])'
above_sse2_reg='%[yz]mm|%k[0-7]'
# Beyond AVX2 (+FMA): AVX-512 registers (zmm, xmm/ymm16-31, mask registers) and mnemonics.
above_avx2_reg='%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])|%k[0-7]|\{%k'
above_avx2_re='^k|^vp?(ternlog|permt2|permi2|compress|expand|align[dq]|rndscale|scalef|getexp|getmant|fixupimm|range|reduce|dbpsadbw|cvt[a-z0-9]*2u|cvtu)'

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# uses_above <lower-label> <object> <mangled>: true when the symbol's code in <object>
# contains instructions above <lower-label>; prints the first few.
uses_above() {
  local lower=$1 obj=$2 sym=$3 ops regs_re ops_re found
  ops="$("$OBJDUMP" -d --no-show-raw-insn --disassemble="$sym" "$obj" | awk -F'\t' 'NF >= 2 && $1 ~ /^ *[0-9a-f]+:/ {print $2}')"
  if [[ "$lower" == sse2 ]]; then regs_re=$above_sse2_reg ops_re=$above_sse2_re; else regs_re=$above_avx2_reg ops_re=$above_avx2_re; fi
  found="$( (grep -E "$regs_re" <<<"$ops" || true; awk '{print $1}' <<<"$ops" | grep -E "$ops_re" || true) | awk '{print $1}' | sort -u | awk 'NR <= 4' | tr '\n' ' ')"
  [[ -n "$found" ]] && { echo "$found"; return 0; }
  return 1
}

rank() { case "$1" in sse2) echo 0 ;; avx2) echo 1 ;; avx512) echo 2 ;; esac; }

errors=0
warnings=0
# report <unsafe?> <message>
report() {
  if [[ "$1" == 1 || "$mode" == strict ]]; then
    echo "ERROR   $2"
    errors=$((errors + 1))
  else
    echo "warning $2"
    warnings=$((warnings + 1))
  fi
}

declare -A label_of syms_of
checked=()
for obj in "${objects[@]}"; do
  base="$(basename "$obj")"
  case "$base" in
    *avx512.cpp.o) label=avx512 ;;
    *avx2.cpp.o) label=avx2 ;;
    *sse2.cpp.o) label=sse2 ;;
    *) continue ;;
  esac
  [[ -f "$obj" ]] || { echo "ERROR   missing object: $obj"; exit 1; }
  label_of[$obj]=$label
  checked+=("$obj")
  syms="$tmp/${#checked[@]}.syms"
  syms_of[$obj]=$syms
  "$NM" -f sysv --defined-only "$obj" | awk -F'|' '
    NF >= 7 {
      for (i = 1; i <= NF; i++) gsub(/^[ \t]+|[ \t]+$/, "", $i)
      if (($3 == "W" || $3 == "V" || $3 == "u") && ($4 == "FUNC" || $7 ~ /^\.text/)) print $1
    }' | sort -u >"$syms"
  # (a)
  while IFS=$'\t' read -r mangled demangled; do
    [[ -n "$mangled" ]] || continue
    grep -Eq "$distinct_re" <<<"$demangled" && continue
    if grep -Eq "$compiler_helper_re" <<<"$demangled"; then
      why="$(uses_above sse2 "$obj" "$mangled")" && report 1 "(a) $base ($label): compiler helper uses $why: $demangled"
      continue
    fi
    unsafe=0 why=""
    if [[ "$label" != sse2 ]] && why="$(uses_above sse2 "$obj" "$mangled")"; then unsafe=1; fi
    report "$unsafe" "(a) $base ($label): weak code not keyed to an ISA${why:+, uses $why}: $demangled"
  done < <(paste "$syms" <("$CXXFILT" <"$syms"))
  # (c)
  asm="$("$OBJDUMP" -d --no-show-raw-insn "$obj")"
  ymm=$(grep -c '%ymm' <<<"$asm" || true)
  zmm=$(grep -c '%zmm' <<<"$asm" || true)
  case "$label" in
    sse2) ((ymm + zmm == 0)) || report 1 "(c) $base: $ymm ymm / $zmm zmm instructions in baseline code" ;;
    avx2) ((zmm == 0)) || report 1 "(c) $base: $zmm zmm instructions in AVX2 code" ;;
    avx512) ((zmm > 0)) || report 1 "(c) $base: no zmm instruction in AVX-512 code" ;;
  esac
  echo "info    $base ($label): $(wc -l <"$syms") weak text symbols, $ymm ymm / $zmm zmm instructions"
done

for l in "${expect[@]}"; do
  found=0
  for obj in "${checked[@]}"; do [[ "${label_of[$obj]}" == "$l" ]] && found=1; done
  ((found)) || report 1 "no object for ISA $l among: ${objects[*]}"
done

# (b)
for ((i = 0; i < ${#checked[@]}; i++)); do
  for ((j = i + 1; j < ${#checked[@]}; j++)); do
    oi=${checked[i]} oj=${checked[j]}
    li=${label_of[$oi]} lj=${label_of[$oj]}
    [[ "$li" == "$lj" ]] && continue
    # lo: the lower ISA, hi_obj: the object built for the higher one
    if (($(rank "$li") < $(rank "$lj"))); then lo=$li hi_obj=$oj; else lo=$lj hi_obj=$oi; fi
    while read -r mangled; do
      [[ -n "$mangled" ]] || continue
      grep -Eq "$compiler_helper_re" <<<"$mangled" && continue  # checked under (a)
      unsafe=0 why=""
      if why="$(uses_above "$lo" "$hi_obj" "$mangled")"; then unsafe=1; fi
      report "$unsafe" "(b) $(basename "$oi") and $(basename "$oj") share weak code${why:+ ($(basename "$hi_obj") copy uses $why)}: $("$CXXFILT" <<<"$mangled")"
    done < <(comm -12 "${syms_of[$oi]}" "${syms_of[$oj]}")
  done
done

if ((errors)); then
  echo "FAILED: $errors errors, $warnings warnings (mode $mode; toolchain.md, 'ODR / COMDAT pitfalls')"
  exit 1
fi
echo "OK: ${#checked[@]} objects, $warnings warnings (mode $mode)"
