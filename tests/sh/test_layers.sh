#!/usr/bin/env bash
# The tree's layering: each folder includes only folders below it.
#   base; then gguf, attention, transport; then matmul, tokenizer; then model;
#   then worker; coordinator; daemon; then the programs (cli, bench) and tests.
# One test per folder that has code, plus one that every folder with code is
# in the table (so that a new folder must be placed before it can land).
set -u
cd "$(dirname "$0")/../.."
. tests/sh/tap.sh

declare -A level=([base]=0 [gguf]=1 [attention]=1 [transport]=1 [matmul]=2 [tokenizer]=2
                  [model]=3 [worker]=4 [coordinator]=5 [daemon]=6 [cli]=7 [bench]=7)

unplaced=""
for dir in */; do
    dir=${dir%/}
    case "$dir" in build|build-*|tests|scripts|docs|deploy|proto|clients) continue ;; esac
    files=$(find "$dir" -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
    [ -n "$files" ] || continue
    if [ -z "${level[$dir]+x}" ]; then unplaced="$unplaced $dir"; continue; fi
    bad=""
    # every quoted include names a folder; system includes (<...>) are not ours
    while IFS=: read -r file inc; do
        top=${inc%%/*}
        [ "$top" = "$dir" ] && continue
        if [ -z "${level[$top]+x}" ]; then
            case "$top" in gen|"$inc") continue ;; esac # generated code; a header in the same folder
            bad="$bad $file:$inc(unknown folder)"
        elif [ "${level[$top]}" -ge "${level[$dir]}" ]; then
            bad="$bad $file:$inc"
        fi
    done < <(grep -H -o -E '^#include "[^"]+"' $files | sed -E 's/#include "([^"]+)"/\1/')
    [ -z "$bad" ]
    check $? "$dir/ includes only folders below it${bad:+: upward or sideways:$bad}"
done
[ -z "$unplaced" ]
check $? "every folder with code has a place in the layering${unplaced:+: not placed:$unplaced}"
check_done
