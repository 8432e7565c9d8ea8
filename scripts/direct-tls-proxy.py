#!/usr/bin/env python3
"""A TLS-terminating proxy that speaks PostgreSQL 17's direct TLS, in front of a local cluster.

Usage: scripts/direct-tls-proxy.py [--no-alpn] [--accept-sslrequest]
           LISTEN_PORT UPSTREAM_PORT CERT KEY

What it stands in for: with `sslnegotiation=direct` a client skips the SSLRequest round trip and
opens with a TLS ClientHello that offers the ALPN protocol `postgresql`. PostgreSQL 17 servers
and Neon's proxy accept that; Debian 12 ships PostgreSQL 15, which does not, so this script
plays the server's part of it here. Like PostgreSQL 17 it refuses a direct connection whose
client does not offer `postgresql` by ALPN (PostgreSQL answers other protocols with a fatal alert
and closes after the handshake when none was offered; this closes right after the handshake in
both cases, as Python's ssl module cannot require ALPN itself). Then it relays the decrypted
bytes to the cluster over plain TCP on 127.0.0.1:UPSTREAM_PORT (scripts/pg.sh accepts non-TLS
there), so the cluster never sees the client's TLS: `pg_stat_ssl` says false and channel binding
cannot work through it, as through any terminating proxy.

CERT and KEY are the cluster's own (`.local/pg/NAME/tls/server.crt|key` of a PG_TLS=1 cluster),
so clients verify it exactly as they would verify the cluster.

  --no-alpn            select no ALPN protocol, as a TLS server that is not PostgreSQL would; a
                       direct client must refuse it
  --accept-sslrequest  also accept the classic SSLRequest before TLS, as PostgreSQL 17 does, so
                       both negotiations can be timed through the same hop; without it the first
                       byte must be a TLS handshake record and anything else is refused

It prints "ready" once listening (on 127.0.0.1, and ::1 when the system has it), then one line per
connection saying how it was negotiated or why it was refused, and exits 0 on SIGTERM or SIGINT.
Python 3 standard library only.
"""

import argparse
import asyncio
import signal
import socket
import ssl
import struct
import sys

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
TLS_HANDSHAKE_RECORD = 0x16
ALPN = "postgresql"
# For hangs only: a client that connects and says nothing is dropped.
FIRST_BYTES_TIMEOUT = 10
HANDSHAKE_TIMEOUT = 10


def log(line):
    print(line, flush=True)


async def readable(loop, sock):
    """Waits until the accepted socket has bytes (or EOF) to read, without reading them."""
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def recv_exactly(loop, sock, n):
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:  # a reset or a TLS error ends the relay like an EOF
        pass
    finally:
        writer.close()


async def serve(loop, sock, args, context):
    # Connecting upstream while the client's handshake runs keeps the extra hop off the clock.
    upstream = asyncio.ensure_future(asyncio.open_connection("127.0.0.1", args.upstream_port))
    client_writer = None
    try:
        await asyncio.wait_for(readable(loop, sock), FIRST_BYTES_TIMEOUT)
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            log("refused: closed before sending anything")
            return
        if first[0] == TLS_HANDSHAKE_RECORD:
            how = "direct"
        elif args.accept_sslrequest and await recv_exactly(loop, sock, 8) == SSL_REQUEST:
            await loop.sock_sendall(sock, b"S")
            how = "sslrequest"
        else:
            log("refused: the first bytes are not a TLS ClientHello (an SSLRequest?)")
            return
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError) as error:
            log(f"refused: TLS handshake failed ({error})")
            return
        sock = None  # the transport owns it now
        client_writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol()
        if how == "direct" and not args.no_alpn and alpn != ALPN:
            log("refused: direct TLS without ALPN postgresql")
            return
        up_reader, up_writer = await upstream
        log(f"{how} {tls.version()} alpn={alpn or '-'}")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, client_writer))
        client_writer = None
    except asyncio.TimeoutError:
        log("refused: nothing received in time")
    except OSError as error:
        log(f"closed: {error}")
    finally:
        upstream.cancel()
        if upstream.done() and not upstream.cancelled() and upstream.exception() is None:
            upstream.result()[1].close()
        if client_writer is not None:
            client_writer.close()
        if sock is not None:
            sock.close()


def listeners(port):
    socks = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            if family == socket.AF_INET:
                raise
            continue  # no IPv6 loopback here
        s.listen(128)
        s.setblocking(False)
        socks.append(s)
    return socks


async def accept_loop(loop, listener, args, context, tasks):
    while True:
        sock, _ = await loop.sock_accept(listener)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.ensure_future(serve(loop, sock, args, context))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def main(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    if not args.no_alpn:
        context.set_alpn_protocols([ALPN])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    socks = listeners(args.listen_port)
    tasks = set()
    accepting = [asyncio.ensure_future(accept_loop(loop, s, args, context, tasks)) for s in socks]
    log("ready")
    await stop.wait()
    for task in accepting + list(tasks):
        task.cancel()
    await asyncio.gather(*accepting, *tasks, return_exceptions=True)
    for s in socks:
        s.close()


def parse():
    parser = argparse.ArgumentParser(
        description="PostgreSQL 17-style direct TLS in front of a local cluster"
    )
    parser.add_argument("--no-alpn", action="store_true", help="select no ALPN protocol")
    parser.add_argument("--accept-sslrequest", action="store_true", help="accept SSLRequest too")
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("cert")
    parser.add_argument("key")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except OSError as error:
        print(f"direct-tls-proxy: {error}", file=sys.stderr)
        sys.exit(1)
