// The stack as one import: `import Libp2p` brings what an application needs to
// run a host, serve and dial protocols, and use pubsub, identify, ping, mDNS,
// the Kademlia DHT, request-response and NAT traversal (AutoNAT, circuit relay
// v2, DCUtR); `Libp2pHostBuilder` makes a host with the usual transports and
// security protocols. The chat's own protocols (FileShare, ChatHistory) are not
// in it: import them by name.
@_exported import AutoNAT
@_exported import DCUtR
@_exported import Host
@_exported import Identify
@_exported import Identity
@_exported import KadDHT
@_exported import LibP2PSecurity
@_exported import MDNS
@_exported import Multiformats
@_exported import NIOCore
@_exported import Noise
@_exported import Perf
@_exported import Ping
@_exported import PubSub
@_exported import QUICTransport
@_exported import Relay
@_exported import RequestResponse
@_exported import TLS
@_exported import Transport
@_exported import WebSocket
