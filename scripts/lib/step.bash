# step WHAT COMMAND [ARG…]: runs COMMAND with its output appended to $step_log, and shows one
# line for it: on a terminal with a live count ([n/N] from SwiftPM, else the lines its tools
# printed), in a pipe a line when it starts, one every 15 s and one when it ends. When it
# fails, its last lines are shown with the log's path, and the script exits. Messages start
# with "$step_name: ".
step() {
    local what="$1"
    shift
    local started=$SECONDS
    printf '\n=== %s\n$ %s\n' "$what" "$*" >> "$step_log"
    local terminal=false
    if [ -t 2 ]; then terminal=true; else echo "$step_name: $what …" >&2; fi
    set +e
    "$@" 2>&1 | tee -a "$step_log" | {
        count=0 progress="" said=$SECONDS
        while IFS= read -r line; do
            count=$((count + 1))
            case "$line" in
                \[[0-9]*/[0-9]*\]*) progress="${line%%]*}]" ;;
            esac
            if [ "$terminal" = true ]; then
                printf '\r\033[K%s: %s %s' "$step_name" "$what" "${progress:-($count lines)}" >&2
            elif [ $((SECONDS - said)) -ge 15 ]; then
                said=$SECONDS
                echo "$step_name: $what ${progress:-($count lines)}, $((SECONDS - started)) s" >&2
            fi
        done
    }
    local status=${PIPESTATUS[0]}
    set -e
    if [ "$terminal" = true ]; then printf '\r\033[K' >&2; fi
    if [ "$status" -ne 0 ]; then
        echo "$step_name: $what failed (exit status $status); its last lines:" >&2
        tail -n 40 "$step_log" | sed 's/^/  | /' >&2
        echo "$step_name: everything it printed is in $step_log" >&2
        exit 1
    fi
    echo "$step_name: $what: done in $((SECONDS - started)) s" >&2
}

