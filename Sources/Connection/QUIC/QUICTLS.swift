import CNIOBoringSSL

/// What the TLS handshake asks of QUIC (RFC 9001 §4.1): secrets to install,
/// handshake bytes to carry in CRYPTO frames, and completion.
public enum QUICTLSEvent: Equatable, Sendable {
    /// Keys to open packets of `level` with.
    case readSecret(EncryptionLevel, CipherSuite, [UInt8])
    /// Keys to protect packets of `level` with.
    case writeSecret(EncryptionLevel, CipherSuite, [UInt8])
    /// Handshake bytes to send in CRYPTO frames at `level`, after those sent before at that level.
    case send(EncryptionLevel, [UInt8])
    /// The handshake finished: peer authenticated, ALPN and transport parameters agreed.
    case handshakeComplete
}

/// Why the TLS side of a QUIC connection failed.
public enum QUICTLSError: Error, Equatable, Sendable {
    /// BoringSSL refused a setting (certificate, key, parameters); says which.
    case setupFailed(String)
    /// The handshake failed; `alert` is the TLS alert sent (CRYPTO_ERROR 0x100 + alert), `reason` BoringSSL's.
    case handshakeFailed(alert: UInt8?, reason: String)
    /// The peer's certificate chain was refused by the verifier.
    case peerCertificateRejected
    /// CRYPTO data came at a level TLS does not read now, or more than it buffers.
    case unexpectedData(EncryptionLevel, reason: String)
    /// The peer sent no quic_transport_parameters extension (RFC 9001 §8.2).
    case missingPeerTransportParameters

    /// The code a CONNECTION_CLOSE carries for this failure.
    public var transportError: TransportErrorCode {
        switch self {
        case .handshakeFailed(let alert?, _): .cryptoError(alert: alert)
        case .peerCertificateRejected: .cryptoError(alert: 42)  // bad_certificate
        case .missingPeerTransportParameters: .cryptoError(alert: 109)  // missing_extension
        case .unexpectedData: .protocolViolation
        case .setupFailed, .handshakeFailed: .internalError
        }
    }
}

/// The TLS settings of one endpoint.
public struct QUICTLSConfiguration: Sendable {
    /// The certificate (DER) this endpoint presents, and its private key
    /// (DER, PKCS#8 or SEC1). libp2p has both sides present one.
    public var certificateDER: [UInt8]
    public var privateKeyDER: [UInt8]
    /// ALPN protocols offered (client) or accepted (server), in preference order.
    public var applicationProtocols: [String]
    /// Our encoded transport parameters, sent in the TLS extension (never empty).
    public var transportParameters: [UInt8]
    /// Judges the peer's chain (DER, leaf first); returning false fails the
    /// handshake with bad_certificate. libp2p checks its certificate extension here.
    public var verifyPeer: @Sendable ([[UInt8]]) -> Bool

    public init(
        certificateDER: [UInt8], privateKeyDER: [UInt8], applicationProtocols: [String] = ["libp2p"],
        transportParameters: [UInt8], verifyPeer: @escaping @Sendable ([[UInt8]]) -> Bool
    ) {
        self.certificateDER = certificateDER
        self.privateKeyDER = privateKeyDER
        self.applicationProtocols = applicationProtocols
        self.transportParameters = transportParameters
        self.verifyPeer = verifyPeer
    }
}

/// The TLS 1.3 handshake of a QUIC connection, run by BoringSSL's QUIC API
/// (`SSL_set_quic_method`) without I/O: CRYPTO data goes in per encryption
/// level, and `QUICTLSEvent`s come out of each call.
///
/// Noncopyable: it owns a BoringSSL `SSL`, which two copies must not share.
public struct QUICTLS: ~Copyable {
    public enum Role: Sendable { case client, server }

    public let role: Role
    private let context: OpaquePointer  // SSL_CTX *
    private let ssl: OpaquePointer  // SSL *
    private let callbacks: CallbackState
    public private(set) var isHandshakeComplete = false

    public init(role: Role, configuration: QUICTLSConfiguration) throws(QUICTLSError) {
        let callbacks = CallbackState(configuration: configuration, role: role)
        let (context, ssl) = try Self.makeSSL(role: role, configuration: configuration, callbacks: callbacks)
        self.role = role
        self.context = context
        self.ssl = ssl
        self.callbacks = callbacks
    }

    /// A configured SSL_CTX and SSL, both freed here if any step fails.
    private static func makeSSL(
        role: Role, configuration: QUICTLSConfiguration, callbacks: CallbackState
    ) throws(QUICTLSError) -> (OpaquePointer, OpaquePointer) {
        guard let context = SSL_CTX_new(TLS_method()) else { throw .setupFailed("SSL_CTX_new") }
        guard let ssl = SSL_new(context) else {
            SSL_CTX_free(context)
            throw .setupFailed("SSL_new")
        }
        do {
            try configure(ssl, context: context, role: role, configuration: configuration, callbacks: callbacks)
        } catch {
            SSL_free(ssl)
            SSL_CTX_free(context)
            throw error
        }
        return (context, ssl)
    }

    private static func configure(
        _ ssl: OpaquePointer, context: OpaquePointer, role: Role, configuration: QUICTLSConfiguration, callbacks: CallbackState
    ) throws(QUICTLSError) {
        // The state lives as long as the QUICTLS that holds both it and the SSL.
        SSL_set_ex_data(ssl, quicTLSExDataIndex, Unmanaged.passUnretained(callbacks).toOpaque())
        guard SSL_CTX_set_min_proto_version(context, UInt16(TLS1_3_VERSION)) == 1,
            SSL_CTX_set_max_proto_version(context, UInt16(TLS1_3_VERSION)) == 1
        else { throw .setupFailed("TLS 1.3 only") }
        // No resumption yet, so NewSessionTickets would be bytes for nothing.
        guard SSL_CTX_set_num_tickets(context, 0) == 1 else { throw .setupFailed("SSL_CTX_set_num_tickets") }
        guard SSL_set_quic_method(ssl, quicMethod) == 1 else { throw .setupFailed("SSL_set_quic_method") }
        let parameters = configuration.transportParameters
        // BoringSSL fails the handshake later without them; v1 always sends initial_source_connection_id.
        guard !parameters.isEmpty else { throw .setupFailed("transport parameters are empty") }
        guard SSL_set_quic_transport_params(ssl, parameters, parameters.count) == 1 else {
            throw .setupFailed("SSL_set_quic_transport_params")
        }
        let certificate = configuration.certificateDER
        guard SSL_use_certificate_ASN1(ssl, certificate, certificate.count) == 1 else {
            throw .setupFailed("certificate: \(drainErrors())")
        }
        let key: OpaquePointer? = configuration.privateKeyDER.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return d2i_AutoPrivateKey(nil, &cursor, buffer.count)
        }
        guard let key else { throw .setupFailed("private key: \(drainErrors())") }
        defer { EVP_PKEY_free(key) }
        guard SSL_use_PrivateKey(ssl, key) == 1, SSL_check_private_key(ssl) == 1 else {
            throw .setupFailed("private key does not match the certificate: \(drainErrors())")
        }
        // Both sides authenticate (libp2p); the verifier decides, not a CA store.
        let mode = role == .server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER
        SSL_set_custom_verify(ssl, Int32(mode), verifyCallback)
        switch role {
        case .client:
            var wire: [UInt8] = []
            for name in configuration.applicationProtocols {
                let bytes = Array(name.utf8)
                guard (1...255).contains(bytes.count) else { throw .setupFailed("ALPN protocol name length \(bytes.count)") }
                wire.append(UInt8(bytes.count))
                wire += bytes
            }
            // SSL_set_alpn_protos returns 0 on success.
            guard SSL_set_alpn_protos(ssl, wire, wire.count) == 0 else { throw .setupFailed("SSL_set_alpn_protos") }
            SSL_set_connect_state(ssl)
        case .server:
            SSL_CTX_set_alpn_select_cb(context, alpnSelectCallback, nil)
            SSL_set_accept_state(ssl)
        }
    }

    /// Replaces the transport parameters to send; only before the handshake
    /// starts (a server learns the original destination ID, which they name,
    /// from the client's first packet).
    public mutating func setTransportParameters(_ parameters: [UInt8]) throws(QUICTLSError) {
        guard SSL_set_quic_transport_params(ssl, parameters, parameters.count) == 1 else {
            throw .setupFailed("SSL_set_quic_transport_params: \(Self.drainErrors())")
        }
    }

    deinit {
        SSL_free(ssl)
        SSL_CTX_free(context)
    }

    /// Starts the handshake: a client's ClientHello (at the Initial level). A server has nothing to say first.
    public mutating func start() throws(QUICTLSError) -> [QUICTLSEvent] {
        try advance()
    }

    /// Hands over CRYPTO data received at `level`, in order (QUIC reassembles
    /// CRYPTO frames first), and returns what TLS wants done in response.
    public mutating func receive(_ data: some Collection<UInt8>, at level: EncryptionLevel) throws(QUICTLSError) -> [QUICTLSEvent] {
        let bytes = Array(data)
        let accepted = bytes.withUnsafeBufferPointer { buffer in
            SSL_provide_quic_data(ssl, level.boringSSL, buffer.baseAddress, buffer.count)
        }
        guard accepted == 1 else { throw .unexpectedData(level, reason: Self.drainErrors()) }
        if isHandshakeComplete {
            // Post-handshake messages (NewSessionTicket) at 1-RTT.
            guard SSL_process_quic_post_handshake(ssl) == 1 else { throw handshakeError() }
            return callbacks.takeEvents()
        }
        return try advance()
    }

    /// The most CRYPTO data TLS accepts buffered at `level` (RFC 9000 §7.5).
    public func maxBufferedData(at level: EncryptionLevel) -> Int {
        SSL_quic_max_handshake_flight_len(ssl, level.boringSSL)
    }

    /// The peer's encoded transport parameters, once its handshake message with them arrived.
    public var peerTransportParameters: [UInt8]? {
        var pointer: UnsafePointer<UInt8>?
        var length = 0
        SSL_get_peer_quic_transport_params(ssl, &pointer, &length)
        guard let pointer, length > 0 else { return nil }
        return Array(UnsafeBufferPointer(start: pointer, count: length))
    }

    /// The protocol ALPN agreed on.
    public var applicationProtocol: String? {
        var pointer: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &pointer, &length)
        guard let pointer, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: pointer, count: Int(length)), as: UTF8.self)
    }

    /// The chain the peer presented (DER, leaf first), as the verifier saw it.
    public var peerCertificates: [[UInt8]] { callbacks.peerChain }

    private mutating func advance() throws(QUICTLSError) -> [QUICTLSEvent] {
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            guard peerTransportParameters != nil else { throw .missingPeerTransportParameters }
            isHandshakeComplete = true
            return callbacks.takeEvents() + [.handshakeComplete]
        }
        guard SSL_get_error(ssl, result) == SSL_ERROR_WANT_READ else { throw handshakeError() }
        return callbacks.takeEvents()
    }

    private func handshakeError() -> QUICTLSError {
        if callbacks.rejectedPeer { return .peerCertificateRejected }
        return .handshakeFailed(alert: callbacks.alert, reason: Self.drainErrors())
    }

    static func drainErrors() -> String {
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return reasons.isEmpty ? "no reason given" : reasons.joined(separator: "; ")
    }
}

// A QUICTLS may move to another thread or task: it is noncopyable, so one
// owner at a time holds it, and every path to its SSL, SSL_CTX and callback
// state goes through that owner's (exclusive, for mutation) access. BoringSSL
// objects carry no thread affinity; they only must not be used concurrently,
// which single ownership rules out. The callback state is reached by BoringSSL
// only inside the calls made by that owner.
extension QUICTLS: @unchecked Sendable {}

/// Where the C callbacks leave what they were told, for the call that
/// caused them to return. Reached from the `SSL`'s ex_data.
private final class CallbackState {
    let configuration: QUICTLSConfiguration
    let role: QUICTLS.Role
    var events: [QUICTLSEvent] = []
    var alert: UInt8?
    var peerChain: [[UInt8]] = []
    var rejectedPeer = false

    init(configuration: QUICTLSConfiguration, role: QUICTLS.Role) {
        self.configuration = configuration
        self.role = role
    }

    func takeEvents() -> [QUICTLSEvent] {
        defer { events = [] }
        return events
    }

    /// Appends handshake bytes, joining them to the previous send at the same level.
    func send(_ bytes: [UInt8], at level: EncryptionLevel) {
        if case .send(let last, let previous)? = events.last, last == level {
            events[events.count - 1] = .send(level, previous + bytes)
        } else {
            events.append(.send(level, bytes))
        }
    }

    static func from(_ ssl: OpaquePointer?) -> CallbackState? {
        guard let ssl, let raw = SSL_get_ex_data(ssl, quicTLSExDataIndex) else { return nil }
        return Unmanaged<CallbackState>.fromOpaque(raw).takeUnretainedValue()
    }
}

private let quicTLSExDataIndex = SSL_get_ex_new_index(0, nil, nil, nil, nil)

extension EncryptionLevel {
    var boringSSL: ssl_encryption_level_t {
        switch self {
        case .initial: ssl_encryption_initial
        case .zeroRTT: ssl_encryption_early_data
        case .handshake: ssl_encryption_handshake
        case .oneRTT: ssl_encryption_application
        }
    }

    init?(_ level: ssl_encryption_level_t) {
        switch level {
        case ssl_encryption_initial: self = .initial
        case ssl_encryption_early_data: self = .zeroRTT
        case ssl_encryption_handshake: self = .handshake
        case ssl_encryption_application: self = .oneRTT
        default: return nil
        }
    }
}

private func secretEvent(
    _ ssl: OpaquePointer?, _ level: ssl_encryption_level_t, _ cipher: OpaquePointer?, _ secret: UnsafePointer<UInt8>?, _ length: Int,
    write: Bool
) -> Int32 {
    guard let state = CallbackState.from(ssl), let level = EncryptionLevel(level), let cipher, let secret,
        let suite = CipherSuite(rawValue: SSL_CIPHER_get_protocol_id(cipher))
    else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: secret, count: length))
    state.events.append(write ? .writeSecret(level, suite, bytes) : .readSecret(level, suite, bytes))
    return 1
}

/// The hooks BoringSSL calls during `SSL_do_handshake`; they only record.
/// Set once when first used and never freed or changed, so sharing the
/// pointer between threads is safe (BoringSSL only reads it).
nonisolated(unsafe) private let quicMethod: UnsafeMutablePointer<SSL_QUIC_METHOD> = {
    let method = UnsafeMutablePointer<SSL_QUIC_METHOD>.allocate(capacity: 1)
    method.initialize(
        to: SSL_QUIC_METHOD(
            set_read_secret: { ssl, level, cipher, secret, length in
                secretEvent(ssl, level, cipher, secret, length, write: false)
            },
            set_write_secret: { ssl, level, cipher, secret, length in
                secretEvent(ssl, level, cipher, secret, length, write: true)
            },
            add_handshake_data: { ssl, level, data, length in
                guard let state = CallbackState.from(ssl), let level = EncryptionLevel(level), let data else { return 0 }
                state.send(Array(UnsafeBufferPointer(start: data, count: length)), at: level)
                return 1
            },
            flush_flight: { _ in 1 },  // Each call returns its events as one flight.
            send_alert: { ssl, _, alert in
                CallbackState.from(ssl)?.alert = alert
                return 1
            }))
    return method
}()

/// Hands the peer's chain to the configured verifier.
private let verifyCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt8>?) -> ssl_verify_result_t = { ssl, alert in
    guard let ssl, let state = CallbackState.from(ssl) else { return ssl_verify_invalid }
    var chain: [[UInt8]] = []
    if let stack = SSL_get0_peer_certificates(ssl) {
        for index in 0..<OPENSSL_sk_num(stack) {
            guard let buffer = OPENSSL_sk_value(stack, index) else { continue }
            let certificate = OpaquePointer(buffer)
            chain.append(Array(UnsafeBufferPointer(start: CRYPTO_BUFFER_data(certificate), count: CRYPTO_BUFFER_len(certificate))))
        }
    }
    state.peerChain = chain
    if !chain.isEmpty, state.configuration.verifyPeer(chain) { return ssl_verify_ok }
    state.rejectedPeer = true
    alert?.pointee = 42  // bad_certificate
    return ssl_verify_invalid
}

/// A server picks the first of its protocols the client offers; none is
/// fatal (RFC 9001 §8.1: no_application_protocol).
private let alpnSelectCallback:
    @convention(c) (
        OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?, UnsafePointer<UInt8>?, UInt32,
        UnsafeMutableRawPointer?
    ) -> Int32 = { ssl, out, outLength, offered, offeredLength, _ in
        guard let state = CallbackState.from(ssl), let offered else { return SSL_TLSEXT_ERR_ALERT_FATAL }
        let list = UnsafeBufferPointer(start: offered, count: Int(offeredLength))
        for wanted in state.configuration.applicationProtocols {
            let name = Array(wanted.utf8)
            var index = 0
            while index < list.count {
                let length = Int(list[index])
                let start = index + 1
                guard start + length <= list.count else { break }
                if length == name.count, Array(list[start..<(start + length)]) == name {
                    out?.pointee = offered + start
                    outLength?.pointee = UInt8(length)
                    return SSL_TLSEXT_ERR_OK
                }
                index = start + length
            }
        }
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }
