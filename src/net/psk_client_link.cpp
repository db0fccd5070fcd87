#include "net/psk_client_link.hpp"

namespace cpns::net {

PskClientLink::PskClientLink(asio::any_io_executor ex, const tls::TlsContext& tls, Options options,
                             Hooks hooks)
    : tls_(tls), opt_(std::move(options)), hooks_(std::move(hooks)), retry_(std::move(ex)) {}

asio::awaitable<std::optional<std::pair<LinkError, PskClientLink::Stage>>> PskClientLink::set_up() {
    auto socket = co_await connect_tcp(opt_.server, kConnectTimeout);
    if (const auto* error = error_of(socket)) co_return std::make_pair(*error, Stage::kConnect);
    if (stopping_)
        co_return std::make_pair(LinkError{pb::PEER_UNREACHABLE, "stopping"}, Stage::kConnect);
    auto conn = std::make_shared<Connection>(std::get<tcp::socket>(std::move(socket)));
    auto failed = co_await conn->client_handshake(tls_, opt_.psk, opt_.handshake_timeout,
                                                  PskLink::kGatewayToServer);
    if (failed) co_return std::make_pair(std::move(*failed), Stage::kHandshake);
    conn_ = std::move(conn);
    co_return std::nullopt;
}

asio::awaitable<LinkError> PskClientLink::read_all() {
    for (;;) {
        auto r = co_await conn_->read();
        if (auto* env = std::get_if<pb::Envelope>(&r)) {
            hooks_.on_message(*env);
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r))
            co_return LinkError{pb::PEER_UNREACHABLE,
                                "bad frame from " + opt_.peer + ": " + std::string(to_string(*de))};
        co_return std::get<LinkError>(std::move(r));
    }
}

asio::awaitable<void> PskClientLink::run() {
    Millis backoff = opt_.retry_min;
    while (!stopping_) {
        auto failed = co_await set_up();
        if (!failed) {
            backoff = opt_.retry_min;
            hooks_.on_up(conn_);
            LinkError lost = co_await read_all();
            lost.reason = pb::PEER_UNREACHABLE;
            conn_->close();
            conn_.reset();
            failed = std::make_pair(std::move(lost), Stage::kLost);
        }
        if (!hooks_.on_down(failed->first, failed->second) || stopping_) co_return;
        retry_.expires_after(std::chrono::milliseconds(backoff));
        std::error_code ec;
        co_await retry_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        backoff = std::min(backoff * 2, opt_.retry_max);
    }
}

void PskClientLink::stop() {
    stopping_ = true;
    retry_.cancel();
    if (conn_) conn_->close();
}

}  // namespace cpns::net
