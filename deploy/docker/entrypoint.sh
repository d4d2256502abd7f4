#!/bin/sh
# Container entrypoint of servekit: picks what to serve, then execs `servekit serve`, so
# servekit is PID 1 and receives SIGTERM itself (no shell left in between).
#
#   (no arguments) or options   serve: SERVEKIT_MODEL_PATH if set; else the repository
#                               mounted at /models; else a single model file there
#                               (.tflite or .onnx); else, /models being empty, the
#                               bundled demo model
#   serve [PATH] [OPTIONS...]   the same; a PATH given first wins
#   inspect|optimize ARGS...    servekit ARGS...
#   any other command           run as it is (docker run -it IMAGE sh)
set -eu

MODELS_DIR=/models

say() {
    echo "servekit-entrypoint: $*" >&2
}

# True when $MODELS_DIR holds at least one <model>/<version>/model.tflite (or model.onnx).
has_repository() {
    for f in "$MODELS_DIR"/*/*/model.tflite "$MODELS_DIR"/*/*/model.onnx; do
        [ -f "$f" ] || continue
        version=$(basename "$(dirname "$f")")
        case "$version" in
            '' | *[!0-9]*) continue ;;
            *) return 0 ;;
        esac
    done
    return 1
}

# True when $MODELS_DIR has no entries at all (hidden ones and lost+found aside).
is_empty() {
    for f in "$MODELS_DIR"/*; do
        [ -e "$f" ] || continue
        [ "$(basename "$f")" = "lost+found" ] && continue
        return 1
    done
    return 0
}

serve() {
    # A path as the first argument, or SERVEKIT_MODEL_PATH, is servekit's to handle.
    if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
        exec servekit serve "$@"
    fi
    if [ -n "${SERVEKIT_MODEL_PATH:-}" ]; then
        exec servekit serve "$@"
    fi
    if has_repository; then
        exec servekit serve "$MODELS_DIR" "$@"
    fi
    count=0
    single=
    for f in "$MODELS_DIR"/*.tflite "$MODELS_DIR"/*.onnx; do
        [ -f "$f" ] || continue
        count=$((count + 1))
        single=$f
    done
    if [ "$count" -eq 1 ]; then
        exec servekit serve "$single" "$@"
    fi
    if is_empty; then
        say "no model in $MODELS_DIR (mount a repository: <model>/<version>/model.tflite or model.onnx); serving the bundled demo model"
        exec servekit serve "$@"
    fi
    # Something is there but not a repository: servekit says what it expected.
    exec servekit serve "$MODELS_DIR" "$@"
}

if [ "$#" -eq 0 ]; then
    serve
fi
case "$1" in
    -*) serve "$@" ;;
    serve)
        shift
        serve "$@"
        ;;
    inspect | optimize) exec servekit "$@" ;;
    *) exec "$@" ;;
esac
