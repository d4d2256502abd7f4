#!/bin/sh
# Container entrypoint of servekit: picks what to serve, then execs `servekit serve`, so
# servekit is PID 1 and receives SIGTERM itself (no shell left in between).
#
#   (no arguments) or options   serve: SERVEKIT_MODEL_PATH if set; else the repository
#                               at /models (any layout servekit reads: <model>/<version>/,
#                               <model>/model.tflite, model files lying in /models); else,
#                               with nothing mounted at /models, the bundled demo model.
#                               A volume mounted at /models that is empty (a fresh volume
#                               holds only lost+found) is an error: exit 2, saying so
#   serve [PATH] [OPTIONS...]   the same; a PATH given first wins
#   inspect|optimize ARGS...    servekit ARGS...
#   any other command           run as it is (docker run -it IMAGE sh)
set -eu

# Overridable for tests only; the image's repository is /models.
MODELS_DIR=${MODELS_DIR:-/models}
MOUNTINFO=${MOUNTINFO:-/proc/self/mountinfo}

say() {
    echo "servekit-entrypoint: $*" >&2
}

# True when a volume is mounted at $MODELS_DIR or inside it (docker -v, a Kubernetes
# volume): the mount table's fifth field is the mount point. Without a mount table, a
# device other than the root's says the same.
is_mounted() {
    if [ -r "$MOUNTINFO" ]; then
        while read -r _ _ _ _ point _; do
            case "$point" in
                "$MODELS_DIR" | "$MODELS_DIR"/*) return 0 ;;
            esac
        done <"$MOUNTINFO"
        return 1
    fi
    [ "$(stat -c %d "$MODELS_DIR" 2>/dev/null)" != "$(stat -c %d / 2>/dev/null)" ]
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
    if ! is_empty; then
        # servekit reads every layout, and says what it expected if it finds no model.
        exec servekit serve "$MODELS_DIR" "$@"
    fi
    if is_mounted; then
        say "the volume mounted at $MODELS_DIR is empty: put a model repository in it" \
            "(<model>/<version>/model.tflite or model.onnx, or model files), or mount" \
            "nothing there to serve the bundled demo model"
        exit 2
    fi
    say "nothing mounted at $MODELS_DIR (mount a repository: <model>/<version>/model.tflite or model.onnx); serving the bundled demo model"
    exec servekit serve "$@"
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
