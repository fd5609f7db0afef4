"""A SPIFFE workload for the Workload API end-to-end tests, written against
the unmodified py-spiffe client (PyPI `spiffe` 0.3.x). Each command prints one
JSON object per line.

  spiffe_workload.py fetch SOCKET AUDIENCE      X.509-SVID, bundles, a JWT-SVID for
                                                AUDIENCE, the JWT bundle, and the
                                                token validated by the agent
  spiffe_workload.py jwt SOCKET AUDIENCE        only a JWT-SVID (or the error)
  spiffe_workload.py renew SOCKET SECONDS       an X509Source; prints each SVID it
                                                receives until SECONDS pass
  spiffe_workload.py watch SOCKET               the raw FetchX509SVID stream (py-spiffe's
                                                own protos): each message's serials,
                                                then how the stream ended
  spiffe_workload.py crl SOCKET                 the serials the published CRL lists
  spiffe_workload.py serve SOCKET PORT [nocrl]  an mTLS server from an X509Source that
                                                checks the published CRL (unless nocrl);
                                                prints each peer's SPIFFE ID, until
                                                stdin closes
  spiffe_workload.py client SOCKET              an mTLS client from one X509Source: for
                                                each PORT read on stdin, a connection;
                                                prints the server's SPIFFE ID (or the
                                                error)
"""
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc


def out(**fields):
    print(json.dumps(fields), flush=True)


def endpoint(path):
    return "unix://" + path


def serial_of(cert):
    return format(cert.serial_number, "x")


def error(e):
    code = getattr(e, "code", None)
    cause = e.__cause__ or e.__context__
    if code is None and cause is not None:
        code = getattr(cause, "code", None)
    code = code() if callable(code) else code
    return {"error": type(e).__name__, "code": getattr(code, "name", None), "message": str(e)}


def fetch(sock, audience):
    client = WorkloadApiClient(endpoint(sock), default_timeout=20)
    svid = client.fetch_x509_svid()
    leaf = svid.leaf
    bundles = client.fetch_x509_bundles()
    jwt = client.fetch_jwt_svid(audience={audience})
    jwt_bundles = client.fetch_jwt_bundles()
    td = svid.spiffe_id.trust_domain
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
    kid = jwt.token.split(".")[0]
    validated = client.validate_jwt_svid(jwt.token, audience)
    out(
        spiffe_id=str(svid.spiffe_id),
        serial=serial_of(leaf),
        not_after=int(leaf.not_valid_after_utc.timestamp()),
        chain=len(svid.cert_chain),
        key_type="ec" if isinstance(svid.private_key, ec.EllipticCurvePrivateKey) else type(svid.private_key).__name__,
        x509_bundle_roots=len(bundles.get_bundle_for_trust_domain(td).x509_authorities),
        jwt_spiffe_id=str(jwt.spiffe_id),
        jwt_audience=sorted(jwt.audience),
        jwt_token=jwt.token,
        jwt_bundle_kids=sorted(jwt_bundle.jwt_authorities.keys()),
        validated=str(validated.spiffe_id),
    )
    client.close()


def jwt_only(sock, audience):
    client = WorkloadApiClient(endpoint(sock), default_timeout=20)
    try:
        jwt = client.fetch_jwt_svid(audience={audience})
        out(spiffe_id=str(jwt.spiffe_id), token=jwt.token)
    except Exception as e:  # the error is the answer
        out(**error(e))
    client.close()


def renew(sock, seconds):
    source = X509Source(socket_path=endpoint(sock), timeout_in_seconds=20)
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        serial = serial_of(source.get_x509_context().default_svid.leaf)
        if serial not in seen:
            seen.append(serial)
            out(serial=serial, spiffe_id=str(source.get_x509_context().default_svid.spiffe_id))
        time.sleep(0.2)
    source.close()


def watch(sock):
    channel = grpc.insecure_channel(endpoint(sock))
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    stream = stub.FetchX509SVID(
        workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")]
    )
    try:
        for message in stream:
            serials = [
                serial_of(x509.load_der_x509_certificate(_first_der(s.x509_svid)))
                for s in message.svids
            ]
            out(update=serials, crls=len(message.crl))
        out(ended="OK")
    except grpc.RpcError as e:
        out(ended=e.code().name, details=e.details())


def _first_der(chain):
    # DER certificates concatenated: the first one's length is in its header.
    length = chain[1]
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(chain[2 : 2 + n], "big") + 2 + n
    else:
        length += 2
    return chain[:length]


def published_crl(sock):
    channel = grpc.insecure_channel(endpoint(sock))
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    stream = stub.FetchX509Bundles(
        workload_pb2.X509BundlesRequest(), metadata=[("workload.spiffe.io", "true")]
    )
    message = next(iter(stream))
    stream.cancel()
    channel.close()
    return [x509.load_der_x509_crl(c) for c in message.crl]


def crl(sock):
    crls = published_crl(sock)
    out(serials=sorted(format(r.serial_number, "x") for c in crls for r in c))


def context(source, sock, server):
    """An SSL context from the source's current SVID and bundle (and, for the
    server, the published CRL checked for every client leaf)."""
    svid = source.get_x509_context().default_svid
    td = svid.spiffe_id.trust_domain
    bundle = source.get_bundle_for_trust_domain(td)
    tmp = tempfile.mkdtemp()
    cert, key, cas = (os.path.join(tmp, n) for n in ("cert.pem", "key.pem", "ca.pem"))
    with open(cert, "wb") as f:
        for c in svid.cert_chain:
            f.write(c.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(
            svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cas, "wb") as f:
        for c in bundle.x509_authorities:
            f.write(c.public_bytes(serialization.Encoding.PEM))
        if server:
            for c in published_crl(sock):
                f.write(c.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cas)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def peer_id(conn):
    for kind, value in conn.getpeercert().get("subjectAltName", ()):
        if kind == "URI":
            return value
    return None


def serve(sock, port, check_crl):
    source = X509Source(socket_path=endpoint(sock), timeout_in_seconds=20)
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.5)
    out(listening=port, spiffe_id=str(source.get_x509_context().default_svid.spiffe_id))

    def accept_forever():
        while True:
            try:
                raw, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                ctx = context(source, sock, True)
                if not check_crl:
                    ctx.verify_flags &= ~ssl.VERIFY_CRL_CHECK_LEAF
                conn = ctx.wrap_socket(raw, server_side=True)
                peer = peer_id(conn)
                conn.sendall((peer or "-").encode() + b"\n")
                conn.close()
                out(accepted=peer)
            except Exception as e:
                out(refused=str(e))
                raw.close()

    threading.Thread(target=accept_forever, daemon=True).start()
    sys.stdin.read()
    listener.close()
    source.close()


def client(sock):
    source = X509Source(socket_path=endpoint(sock), timeout_in_seconds=20)
    out(ready=str(source.get_x509_context().default_svid.spiffe_id))
    for line in sys.stdin:
        port = int(line)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            conn = context(source, sock, False).wrap_socket(raw)
            server = peer_id(conn)
            reply = conn.recv(1024).decode().strip()
            if not reply:
                raise ConnectionError("the server closed the connection")
            out(server=server, seen_as=reply, own_serial=serial_of(source.get_x509_context().default_svid.leaf))
        except Exception as e:
            out(error=str(e), own_serial=serial_of(source.get_x509_context().default_svid.leaf))
        finally:
            raw.close()
    source.close()


def main():
    command, sock, *rest = sys.argv[1:]
    if command == "fetch":
        fetch(sock, rest[0])
    elif command == "jwt":
        jwt_only(sock, rest[0])
    elif command == "renew":
        renew(sock, float(rest[0]))
    elif command == "watch":
        watch(sock)
    elif command == "crl":
        crl(sock)
    elif command == "serve":
        serve(sock, int(rest[0]), rest[1:] != ["nocrl"])
    elif command == "client":
        client(sock)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
