# Shell helpers shared by bench/run.sh and bench/scale.sh (sourced; run from the repo root).

# A free TCP port on 127.0.0.1.
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait until URL answers, or fail if the server PID died or took more than 10 s.
wait_up() {  # URL PID
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "server $2 died" >&2; return 1; }
        sleep 0.1
    done
    echo "server at $1 did not start" >&2; return 1
}
