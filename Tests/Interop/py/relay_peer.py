"""A py-libp2p peer for p2pchat's NAT traversal interop tests (circuit relay v2, AutoNAT).

Modes (every stdout line is one JSON object, as in peer.py):
  relay                      serve the hop protocol (py-libp2p's CircuitV2Protocol, allow_hop)
                             on 127.0.0.1 until stdin closes; emits "listening"
  listen-via RELAY_ADDR      connect to a relay, reserve a slot, accept relayed connections
                             (served: echo, ping, identify) until stdin closes; emits "reserved"
  dial-via CIRCUIT_ADDR ACTION
                             dial <relay>/p2p-circuit/p2p/<target> with py-libp2p's
                             CircuitV2Transport, then run ping or echo over it
  dcutr-dial CIRCUIT_ADDR    as dial-via, with py-libp2p's DCUtRProtocol running; emits "direct"
                             once a direct connection to the target exists, then waits for stdin EOF
  dcutr-listen RELAY_ADDR    as listen-via, with py-libp2p's DCUtRProtocol running (it starts DCUtR
                             on the relayed connections it accepts); emits "direct" once a direct
                             connection to a peer exists, then waits for stdin EOF
  autonat-server             serve /libp2p/autonat/1.0.0 (py-libp2p's AutoNATService) until
                             stdin closes; emits "listening"
  autonat-ask TARGET         connect to TARGET and ask it to dial us back; emits "autonat"
"""

import argparse
import time

import multiaddr
import trio

from libp2p.host.autonat.autonat import AutoNATService
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from peer import do_ping, echo_once, emit, make_host, run_script, wait_for_stdin_eof


async def run(args) -> None:
    host = make_host(args.seed)
    listen = [multiaddr.Multiaddr(f"/ip4/{args.ip}/tcp/{args.port}")]
    async with host.run(listen_addrs=listen):
        if args.mode.startswith("autonat"):
            await run_autonat(host, args)
            return
        if args.mode == "relay":
            limits = RelayLimits(
                duration=args.duration, data=args.data, max_circuit_conns=8, max_reservations=args.max_reservations
            )
            protocol = CircuitV2Protocol(host, limits=limits, allow_hop=True)
        else:
            protocol = CircuitV2Protocol(host, allow_hop=False)
        async with background_trio_service(protocol):
            await protocol.event_started.wait()
            me = host.get_id().to_base58()
            if args.mode == "relay":
                emit(event="listening", peer=me, addr=f"{host.get_addrs()[0]}")
                await wait_for_stdin_eof()
                return
            transport = CircuitV2Transport(host, protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
            if args.mode in ("listen-via", "dcutr-listen"):
                relay = info_from_p2p_addr(multiaddr.Multiaddr(args.relay))
                await host.connect(relay)
                async with trio.open_nursery() as nursery:
                    stream = await host.new_stream(relay.peer_id, [HOP_ID])
                    ok = await transport.reserve(stream, relay.peer_id, nursery)
                    emit(event="reserved", ok=ok, peer=me, addr=f"{args.relay}/p2p-circuit/p2p/{me}")
                    if not ok:
                        raise RuntimeError("the relay refused the reservation")
                    if args.mode == "dcutr-listen":
                        dcutr = DCUtRProtocol(host)
                        async with background_trio_service(dcutr):
                            await dcutr.event_started.wait()
                            direct = None
                            while direct is None:
                                await trio.sleep(0.05)
                                for peer_id in list(host.get_network().connections.keys()):
                                    if peer_id != relay.peer_id and await dcutr._have_direct_connection(peer_id):
                                        direct = peer_id
                            emit(event="direct", peer=direct.to_base58())
                            await wait_for_stdin_eof()
                    else:
                        await wait_for_stdin_eof()
                    nursery.cancel_scope.cancel()
                return
            target = multiaddr.Multiaddr(args.target)
            if args.mode == "dcutr-dial":
                dcutr = DCUtRProtocol(host)
                async with background_trio_service(dcutr):
                    await dcutr.event_started.wait()
                    conn = await transport.dial(target)
                    peer_id = conn.muxed_conn.peer_id
                    emit(event="connected", peer=peer_id.to_base58())
                    while not await dcutr._have_direct_connection(peer_id):
                        await trio.sleep(0.05)
                    emit(event="direct", peer=peer_id.to_base58())
                    await wait_for_stdin_eof()
                return
            conn = await transport.dial(target)
            peer_id = conn.muxed_conn.peer_id
            emit(event="connected", peer=peer_id.to_base58())
            if args.action == "ping":
                await do_ping(host, peer_id, args.count)
            else:
                start = time.perf_counter()
                ok = await echo_once(host, peer_id, args.bytes, 1)
                emit(event="echo", bytes=args.bytes, ok=ok, seconds=time.perf_counter() - start)
                if not ok:
                    raise RuntimeError("echoed bytes differ")


async def run_autonat(host, args) -> None:
    service = AutoNATService(host, serve=args.mode == "autonat-server")
    if args.mode == "autonat-server":
        emit(event="listening", peer=host.get_id().to_base58(), addr=f"{host.get_addrs()[0]}")
        await wait_for_stdin_eof()
        return
    target = info_from_p2p_addr(multiaddr.Multiaddr(args.target))
    await host.connect(target)
    status, addr = await service.query_server(target.peer_id)
    emit(event="autonat", status=int(status), addr=str(multiaddr.Multiaddr(addr)) if addr else None,
         listen=[str(a) for a in host.get_addrs()])


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--seed")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    sub = parser.add_subparsers(dest="mode", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--duration", type=int, default=120, help="seconds per circuit")
    relay.add_argument("--data", type=int, default=1 << 24, help="bytes per circuit")
    relay.add_argument("--max-reservations", type=int, default=8)
    listen = sub.add_parser("listen-via")
    listen.add_argument("relay")
    dial = sub.add_parser("dial-via")
    dial.add_argument("target")
    dial.add_argument("action", choices=["ping", "echo"])
    dial.add_argument("--count", type=int, default=3)
    dial.add_argument("--bytes", type=int, default=64 * 1024)
    punch = sub.add_parser("dcutr-dial")
    punch.add_argument("target")
    punch_listen = sub.add_parser("dcutr-listen")
    punch_listen.add_argument("relay")
    sub.add_parser("autonat-server")
    ask = sub.add_parser("autonat-ask")
    ask.add_argument("target")
    return parser.parse_args()


if __name__ == "__main__":
    run_script(run, parse_args)
