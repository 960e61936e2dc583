"""A py-libp2p Kademlia DHT peer (libp2p.kad_dht) for p2pchat's DHT interop tests.

Runs a host (TCP + Noise + Yamux, as peer.py) with a KadDHT in server or client
mode, registers a validator for the "p2pchat" namespace (bounded UTF-8 values,
the greatest wins, as p2pchat's own validator), then executes JSON commands read
from stdin, one per line, printing one JSON object per result:

  {"op": "connect", "addr": MULTIADDR}            -> {"event": "connected", "peer": ID}
  {"op": "closest", "key": HEX}                   -> {"event": "closest", "peers": [ID...]}
  {"op": "provide", "key": HEX}                   -> {"event": "provided", "ok": bool}
  {"op": "providers", "key": HEX}                 -> {"event": "providers", "peers": [ID...]}
  {"op": "put", "key": STR, "value": STR}         -> {"event": "put"}
  {"op": "get", "key": STR}                       -> {"event": "got", "value": STR or null}
  {"op": "local", "key": STR}                     -> {"event": "local", "value": STR or null}
  {"op": "table"}                                 -> {"event": "table", "peers": [ID...]}

It ends on stdin EOF, or fails after --timeout (as every peer script, see peer.run_script).
"""

import argparse
import json
import sys

import multiaddr

from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID as PeerID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from peer import emit, make_host, run_script, stdin_lines  # noqa: E402


class ChatValidator(Validator):
    """The /p2pchat/ namespace: UTF-8 text of at most 1 KiB; the greatest value wins."""

    def validate(self, key: str, value: bytes) -> None:
        if len(value) > 1024:
            raise ValueError("value too large")
        value.decode("utf-8")

    def select(self, key: str, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: values[i])


async def run_command(host, dht, command: dict) -> None:
    op = command["op"]
    if op == "connect":
        info = info_from_p2p_addr(multiaddr.Multiaddr(command["addr"]))
        await host.connect(info)
        # The remote answers DHT requests: put it in the routing table.
        await dht.add_peer(info.peer_id, skip_server_mode_check=True)
        emit(event="connected", peer=info.peer_id.to_base58())
    elif op == "closest":
        peers = await dht.peer_routing.find_closest_peers_network(bytes.fromhex(command["key"]))
        emit(event="closest", peers=[p.to_base58() for p in peers])
    elif op == "provide":
        ok = await dht.provider_store.provide(bytes.fromhex(command["key"]))
        emit(event="provided", ok=bool(ok))
    elif op == "providers":
        infos = await dht.provider_store.find_providers(bytes.fromhex(command["key"]))
        emit(event="providers", peers=[i.peer_id.to_base58() for i in infos],
             addrs=[[str(a) for a in i.addrs] for i in infos])
    elif op == "put":
        await dht.put_value(command["key"], command["value"].encode())
        emit(event="put")
    elif op == "get":
        value = await dht.get_value(command["key"])
        emit(event="got", value=value.decode() if value is not None else None)
    elif op == "local":
        record = dht.value_store.get(command["key"].encode())
        emit(event="local", value=record.value.decode() if record is not None else None)
    elif op == "table":
        emit(event="table", peers=[p.to_base58() for p in dht.routing_table.get_peer_ids()])
    else:
        emit(event="error", message=f"unknown op {op}")


async def main(args) -> None:
    host = make_host(args.seed)
    listen = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{args.port}")]
    async with host.run(listen_addrs=listen):
        mode = DHTMode.SERVER if args.mode == "server" else DHTMode.CLIENT
        dht = KadDHT(host, mode)
        dht.register_validator("p2pchat", ChatValidator())
        async with background_trio_service(dht):
            emit(event="listening", peer=host.get_id().to_base58(), addr=str(host.get_addrs()[0]))
            async for line in stdin_lines():
                if not line.strip():
                    continue
                try:
                    await run_command(host, dht, json.loads(line))
                except Exception as error:  # reported, the peer goes on
                    emit(event="error", message=f"{type(error).__name__}: {error}")


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", help="hex Ed25519 seed (32 bytes)")
    parser.add_argument("--timeout", type=float, default=120)
    return parser.parse_args()


if __name__ == "__main__":
    run_script(main, parse_args)
