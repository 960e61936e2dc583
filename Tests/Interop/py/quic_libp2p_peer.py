"""A py-libp2p host (as pinned in requirements.txt) listening on /quic-v1 only,
for QUICTests: the Swift QUIC core dials it as libp2p does (ALPN libp2p, both
sides' libp2p certificates checked) and runs /ipfs/ping/1.0.0 on a stream.

    quic_libp2p_peer.py [SECONDS]   prints {"event": "listening", "peer": ID, "port": N}, serves until SECONDS pass or stdin closes
    quic_libp2p_peer.py dial ADDR   dials ADDR (/ip4/.../udp/N/quic-v1/p2p/ID), pings once, prints {"event": "ping", "ok": true}
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


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def wait_for_stdin_eof():
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(4096):
        pass


async def main(seconds):
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
    host = new_host(key_pair=create_new_key_pair(), enable_quic=True, listen_addrs=listen)
    async with host.run(listen_addrs=listen):
        address = host.get_addrs()[0]
        emit(event="listening", peer=host.get_id().to_base58(), port=int(address.value_for_protocol("udp")))
        with trio.move_on_after(seconds):
            await wait_for_stdin_eof()


async def dial(address):
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]
    host = new_host(key_pair=create_new_key_pair(), enable_quic=True, listen_addrs=listen)
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


try:
    if len(sys.argv) > 2 and sys.argv[1] == "dial":
        trio.run(dial, sys.argv[2])
    else:
        trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 60)
except Exception as error:  # reported to the test, which fails with it
    emit(event="error", error=repr(error))
    sys.exit(1)
