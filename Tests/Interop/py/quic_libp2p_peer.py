"""A py-libp2p host (as pinned in requirements.txt) listening on /quic-v1 only,
for QUICTests: the Swift QUIC core dials it as libp2p does (ALPN libp2p, both
sides' libp2p certificates checked) and runs /ipfs/ping/1.0.0 on a stream.

    quic_libp2p_peer.py [SECONDS]   prints {"event": "listening", "peer": ID, "port": N}, serves until SECONDS pass or stdin closes
    quic_libp2p_peer.py dial ADDR [STREAMS BYTES]
        dials ADDR (/ip4/.../udp/N/quic-v1/p2p/ID), pings once, prints {"event": "ping", "ok": true};
        with STREAMS and BYTES, then echoes BYTES on each of STREAMS streams at once over /p2pchat/echo/1.0.0
        and prints {"event": "echo", "streams": STREAMS, "intact": K}

Both modes serve /p2pchat/echo/1.0.0 (every byte back, then the write side closed).
"""

import json
import os
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr


ECHO = TProtocol("/p2pchat/echo/1.0.0")


def is_end_of_stream(error):
    # py-libp2p's QUIC streams raise StreamEOF at the remote's end of data, where Yamux streams return b"".
    return type(error).__name__ in ("StreamEOF", "MuxedStreamEOF")


async def read_or_end(stream, size):
    try:
        return await stream.read(size)
    except Exception as error:
        if is_end_of_stream(error):
            return b""
        raise


async def echo_handler(stream):
    try:
        while True:
            data = await read_or_end(stream, 65536)
            if not data:
                break
            await stream.write(data)
        await stream.close()
    except Exception as error:
        print(f"echo handler: {error!r}", file=sys.stderr, flush=True)
        await stream.reset()


async def echo_once(host, peer_id, size, seed, results):
    stream = await host.new_stream(peer_id, [ECHO])
    payload = bytes((i * 131 + seed * 17 + (i >> 11)) & 0xFF for i in range(size))
    received = bytearray()

    async def reader():
        while len(received) < size:
            data = await read_or_end(stream, 65536)
            if not data:
                break
            received.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for offset in range(0, size, 65536):
            await stream.write(payload[offset:offset + 65536])
    await stream.close()
    results.append(bytes(received) == payload)


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def wait_for_stdin_eof():
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(4096):
        pass


async def main(seconds):
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
    host = new_host(key_pair=create_new_key_pair(), enable_quic=True, listen_addrs=listen)
    host.set_stream_handler(ECHO, echo_handler)
    async with host.run(listen_addrs=listen):
        address = host.get_addrs()[0]
        emit(event="listening", peer=host.get_id().to_base58(), port=int(address.value_for_protocol("udp")))
        with trio.move_on_after(seconds):
            await wait_for_stdin_eof()


async def dial(address, streams=0, size=0):
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
    host = new_host(key_pair=create_new_key_pair(), enable_quic=True, listen_addrs=listen)
    host.set_stream_handler(ECHO, echo_handler)
    async with host.run(listen_addrs=listen):
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        with trio.fail_after(20):
            await host.connect(info)
            emit(event="connected", peer=info.peer_id.to_base58())
            stream = await host.new_stream(info.peer_id, [TProtocol("/ipfs/ping/1.0.0")])
            payload = os.urandom(32)
            await stream.write(payload)
            back = b""
            while len(back) < 32:
                back += await stream.read(32 - len(back))
            emit(event="ping", ok=back == payload)
            await stream.close()
        if streams:
            results = []
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for seed in range(streams):
                        nursery.start_soon(echo_once, host, info.peer_id, size, seed, results)
            emit(event="echo", streams=streams, intact=sum(1 for ok in results if ok))


try:
    if len(sys.argv) > 2 and sys.argv[1] == "dial":
        counts = [int(value) for value in sys.argv[3:5]]
        trio.run(dial, sys.argv[2], *counts)
    else:
        trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 60)
except Exception as error:  # reported to the test, which fails with it
    emit(event="error", error=repr(error))
    sys.exit(1)
