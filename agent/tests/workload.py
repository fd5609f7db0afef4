"""A workload for the agent's end-to-end tests: HTTP/1.1 over the agent's
Unix socket with nothing but the standard library.

  workload.py request SOCKET GRANT [bind]      one request, prints STATUS BODY
  workload.py exec SOCKET GRANT OTHER_PYTHON   a request, then exec OTHER_PYTHON
                                               which reuses the same connection
  workload.py reuse FD GRANT                   (the exec'd side)
  workload.py lend SOCKET GRANT OTHER_PYTHON   connect, fork a child that keeps
                                               the socket, exec OTHER_PYTHON;
                                               the child then makes a request
  workload.py bind SOCKET GRANT                request with bind_to_process,
                                               print, then wait for stdin EOF
  workload.py cctoken SOCKET GRANT             a container-credentials token,
                                               print, then wait for stdin EOF
  workload.py delete SOCKET LEASE              DELETE /v1/credentials/LEASE
  workload.py flood SOCKET N                   N connections, a health check on
                                               each; prints SERVED CLOSED, then
                                               holds them until stdin EOF
"""
import json
import os
import signal
import socket
import sys
import time


def call(sock, grant, bind=False, path="/v1/credentials"):
    body = {"grant": grant}
    if bind:
        body["bind_to_process"] = True
    exchange(sock, "POST", path, json.dumps(body).encode())


def exchange(sock, method, path, data=b""):
    """One request; prints STATUS BODY."""
    sock.sendall(
        b"%s %s HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
        % (method.encode(), path.encode())
        + b"Content-Length: %d\r\n\r\n" % len(data)
        + data
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = lines[0].split(" ")[1]
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.lower() == "content-length":
            length = int(v)
    while len(rest) < length:
        rest += sock.recv(65536)
    print(status, rest[:length].decode(), flush=True)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


mode = sys.argv[1]
if mode == "request":
    call(connect(sys.argv[2]), sys.argv[3], len(sys.argv) > 4)
elif mode == "bind":
    call(connect(sys.argv[2]), sys.argv[3], True)
    sys.stdin.read()
elif mode == "cctoken":
    call(connect(sys.argv[2]), sys.argv[3], path="/v1/container-credentials/token")
    sys.stdin.read()
elif mode == "delete":
    s = connect(sys.argv[2])
    exchange(s, "DELETE", "/v1/credentials/" + sys.argv[3])
elif mode == "exec":
    s = connect(sys.argv[2])
    call(s, sys.argv[3])
    os.set_inheritable(s.fileno(), True)
    other = sys.argv[4]
    os.execv(other, [other, __file__, "reuse", str(s.fileno()), sys.argv[3]])
elif mode == "lend":
    s = connect(sys.argv[2])
    parent = os.getpid()
    before = os.readlink("/proc/self/exe")
    if os.fork() == 0:
        # Ask once the parent runs the other binary, then end it.
        def exe():
            try:
                return os.readlink(f"/proc/{parent}/exe")
            except FileNotFoundError:  # mid-exec, or gone
                return None

        deadline = time.monotonic() + 30
        while exe() in (before, None):
            if time.monotonic() > deadline:
                raise SystemExit("the parent never ran the other binary")
            time.sleep(0.01)
        call(s, sys.argv[3])
        os.kill(parent, signal.SIGTERM)
        os._exit(0)
    other = sys.argv[4]
    os.execv(other, [other, "-c", "import time; time.sleep(60)"])
elif mode == "flood":
    socks = [connect(sys.argv[2]) for _ in range(int(sys.argv[3]))]
    served = 0
    for s in socks:
        try:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n")
            served += s.recv(65536).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    print(served, len(socks) - served, flush=True)
    sys.stdin.read()
elif mode == "reuse":
    call(socket.socket(fileno=int(sys.argv[2])), sys.argv[3])
