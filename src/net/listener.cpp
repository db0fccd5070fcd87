#include "net/listener.hpp"

namespace cpns::net {

using tcp = asio::ip::tcp;

Listener::Listener(asio::any_io_executor ex, std::size_t max_open, Hooks hooks)
    : acceptor_(std::move(ex)), max_open_(max_open), hooks_(std::move(hooks)) {}

std::optional<LinkError> Listener::listen(const HostPort& at, std::string_view what) {
    std::error_code ec;
    tcp::endpoint ep(asio::ip::make_address(at.host, ec), at.port);
    if (ec)
        return LinkError{pb::INTERNAL_ERROR,
                         std::string(what) + " '" + at.host + "' is not an IP address"};
    acceptor_.open(ep.protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(ep, ec);
    if (ec)
        return LinkError{pb::INTERNAL_ERROR, "cannot listen on " + at.str() + ": " + ec.message()};
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    return std::nullopt;
}

asio::awaitable<void> Listener::run() {
    for (;;) {
        std::error_code ec;
        auto socket =
            co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (!acceptor_.is_open()) co_return;
            if (hooks_.on_error) hooks_.on_error(ec);
            continue;
        }
        if (open_ >= max_open_) {
            if (hooks_.on_refused) hooks_.on_refused(open_);
            continue;
        }
        hooks_.on_socket(std::move(socket));
    }
}

void Listener::close() {
    std::error_code ec;
    acceptor_.close(ec);
}

}  // namespace cpns::net
