#!/usr/bin/env bash
# tests/cpu/variants_isolated.sh OBJECT_DIR... | --binary FILE...
#
# The CPU kernels are compiled once per x86 instruction set (kernels/cpu/isa.h), and only the
# variant that the CPU runs may execute instructions beyond baseline x86-64.
#  - OBJECT_DIR (the CMake object directory of one variant, ds_cpu_<variant>.dir): every function
#    in its objects that holds such an instruction must live in the variant's own namespace,
#    ds::cpu::<variant>. Any other (a C++ library template or a header's inline function
#    instantiated inside the `#pragma GCC target` region) is a weak symbol that the linker may
#    pick for callers everywhere, which would then fault on CPUs without those instructions.
#  - --binary FILE (a portable build, DS_NATIVE=OFF): no function outside the variants'
#    namespaces holds such an instruction, so the binary runs on any x86-64 CPU.
# "Such an instruction": a VEX/EVEX encoding (v* mnemonics, ymm/zmm registers, mask registers)
# or BMI1/2, LZCNT, MOVBE. Exit 0: clean; 1: functions found (listed); 2: bad usage.
set -euo pipefail
usage() { echo "usage: $0 OBJECT_DIR... | --binary FILE..." >&2; exit 2; }
[[ $# -ge 1 && "$1" != "-h" && "$1" != "--help" ]] || usage

# Lists the functions of an objdump listing (stdin) that hold such instructions and whose
# demangled names do not match the regex $1.
offenders() {
  awk -v allowed="$1" '
    /^[0-9a-f]+ <.*>:$/ { fn = substr($0, index($0, "<") + 1); sub(/>:$/, "", fn); next }
    /^ +[0-9a-f]+:\t/ {
      split($0, f, "\t"); insn = f[2]
      if (insn ~ /^(v[a-z0-9]+|shlx|shrx|sarx|rorx|andn|bzhi|pdep|pext|lzcnt|tzcnt|movbe|blsr|blsi|blsmsk|bextr|mulx|kmov[bwdq])[ \t]/ ||
          insn ~ /%[yz]mm|%k[0-7]/) {
        if (fn !~ allowed && !(fn in seen)) { seen[fn] = 1; print "  " fn ": " insn }
      }
    }'
}

bad=0
if [[ "$1" == "--binary" ]]; then
  shift
  [[ $# -ge 1 ]] || usage
  for bin in "$@"; do
    [[ -f "$bin" ]] || { echo "no such file: $bin" >&2; exit 2; }
    leaks=$(objdump -d --no-show-raw-insn -C "$bin" | offenders 'ds::cpu::(avx512vnni|avx512|avxvnni|avx2)::')
    if [[ -n "$leaks" ]]; then
      echo "$bin: functions outside the CPU kernel variants with instructions beyond x86-64:"
      echo "$leaks" | head -n 50
      bad=1
    else
      echo "$bin: only the CPU kernel variants use instructions beyond x86-64"
    fi
  done
  exit $bad
fi

checked=0
for dir in "$@"; do
  variant=$(basename "$dir" .dir)
  variant=${variant#ds_cpu_}
  mapfile -t objs < <(find "$dir" -name '*.o' 2>/dev/null | sort)
  [[ ${#objs[@]} -gt 0 ]] || { echo "no objects under $dir" >&2; exit 2; }
  for o in "${objs[@]}"; do
    checked=$((checked + 1))
    leaks=$(objdump -d --no-show-raw-insn -C "$o" | offenders "ds::cpu::${variant}::")
    if [[ -n "$leaks" ]]; then
      echo "$o (variant $variant): functions outside ${variant}'s namespace with its instructions:"
      echo "$leaks"
      bad=1
    fi
  done
done
echo "checked $checked objects of $# variants"
exit $bad
