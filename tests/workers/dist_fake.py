"""A stand-in worker for testing tests/dist_utils.py itself (no TensorFlow).

``dist_fake.py hang PIDFILE``: starts a grandchild, writes both PIDs to PIDFILE
and sleeps forever, like a distributed worker whose peer never comes.
``dist_fake.py bind PORT``: binds 127.0.0.1:PORT as a server would, and fails
with the message gRPC prints when the port is taken.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def hang(pid_file: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(pid_file, "w") as f:
        f.write(f"{child.pid}\n")
    print("hanging", flush=True)
    time.sleep(3600)


def bind(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        print(f"Address already in use: 127.0.0.1:{port}", flush=True)
        sys.exit(1)
    sock.close()
    print("bound", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "hang":
        hang(sys.argv[2])
    else:
        bind(int(sys.argv[2]))
