// cpnsctl's client of the management API (cpnsctl --api URL --token-file F).
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <stdexcept>
#include <string>

namespace cpns::api {

// Timeouts of one request (seconds).
inline constexpr int kClientConnectTimeoutS = 5;
inline constexpr int kClientReadTimeoutS = 30;

// An answer other than 2xx: its HTTP status and the error body's code and message.
class ApiError : public std::runtime_error {
  public:
    ApiError(int status, std::string code, const std::string& message)
        : std::runtime_error(message), status_(status), code_(std::move(code)) {}
    int status() const { return status_; }
    const std::string& code() const { return code_; }

  private:
    int status_;
    std::string code_;
};

class ApiClient {
  public:
    // url: "https://host:port" or "http://host:port"; ca_file: PEM to verify the server's
    // certificate with (else the system's); token: as sent in the Authorization header.
    ApiClient(const std::string& url, std::string token, const std::string& ca_file);
    ~ApiClient();
    // The JSON answer; ApiError for an error answer, std::runtime_error when no answer came.
    nlohmann::json get(const std::string& path);
    nlohmann::json post(const std::string& path, const nlohmann::json& body);
    nlohmann::json del(const std::string& path);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Reads a token file of cpnsctl (the token's 64 hex characters, one line; mode 0600).
std::string read_token_file(const std::string& path);
// Percent-encodes one path segment or query value.
std::string url_encode(const std::string& text);

}  // namespace cpns::api
