"""Serve a classic AGI script over TCP the way Asterisk runs it: one new process per call.

For each accepted connection a thread spawns the script (fork+exec) with the socket as
its stdin and stdout, then waits for it to exit. That is what Asterisk does for a local
``AGI(script)``: the channel's thread forks, execs the script with pipes on stdin/stdout,
and waits for it; here the pipes are the socket so the benchmark's load client can play
Asterisk's side over TCP, exactly as it does against the FastAGI server.

    python bench/classic_agi_launcher.py --port 0 -- PROGRAM [ARG ...]

Prints ``LISTENING <port>`` on stdout once it accepts connections. Runs until killed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading

# Generous, so connections of a burst wait in the kernel queue rather than being
# refused: the classic side should not lose calls because of its launcher.
LISTEN_BACKLOG = 1024


def run_script(conn: socket.socket, command: list[str]) -> None:
    """One call: the script owns the connection until it exits."""
    try:
        with conn:
            process = subprocess.Popen(command, stdin=conn, stdout=conn)
        # Our copy is closed here, so the peer sees the connection close the moment the
        # script exits, not when this thread gets round to it.
    except OSError as exc:
        print(f"classic launcher: cannot start {command[0]}: {exc}", file=sys.stderr)
        return
    # Waiting (like Asterisk does) reaps the child, and puts its CPU time into this
    # process's children's times, where the benchmark reads it.
    process.wait()


def serve(listener: socket.socket, command: list[str]) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=run_script, args=(conn, command), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("command", nargs="+", help="the AGI script and its arguments")
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=LISTEN_BACKLOG)
    print(f"LISTENING {listener.getsockname()[1]}", flush=True)
    try:
        serve(listener, args.command)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
