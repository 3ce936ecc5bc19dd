#!/usr/bin/env bash
# The tree's layering: each folder includes only folders below it.
#   base; then gguf, attention, transport, net; then matmul, tokenizer; then
#   model; then worker; coordinator; daemon; then the programs (cli, bench,
#   clients). Code generated from proto/ (*.pb-c.h) sits below everything.
# One test per folder that has code, plus one that every folder with code is
# in the table (so that a new folder must be placed before it can land).
set -u
cd "$(dirname "$0")/../.."
. tests/sh/tap.sh

declare -A level=([base]=0 [gguf]=1 [attention]=1 [transport]=1 [net]=1 [matmul]=2 [tokenizer]=2
                  [model]=3 [worker]=4 [coordinator]=5 [daemon]=6 [cli]=7 [bench]=7 [clients]=7)

unplaced=""
for dir in */; do
    dir=${dir%/}
    case "$dir" in build|build-*|tests|scripts|docs|deploy|proto) continue ;; esac
    files=$(find "$dir" -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
    [ -n "$files" ] || continue
    if [ -z "${level[$dir]+x}" ]; then unplaced="$unplaced $dir"; continue; fi
    bad=""
    # every quoted include names a folder; system includes (<...>) are not ours
    while IFS=: read -r file inc; do
        top=${inc%%/*}
        [ "$top" = "$dir" ] && continue
        case "$inc" in *.pb-c.h) continue ;; esac # generated from proto/
        if [ -z "${level[$top]+x}" ]; then
            [ "$top" = "$inc" ] && continue # a header beside the file
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
