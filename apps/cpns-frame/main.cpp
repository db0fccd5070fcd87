// cpns-frame: turns CPNS messages into wire frames and back, from and to the schema's JSON
// form. For debugging and for driving peers that are not cpns (openssl s_client, gnutls-cli).
#include <CLI/CLI.hpp>

#include <iostream>
#include <iterator>

#include "common/version.hpp"
#include "daemon/common.hpp"

using namespace cpns;
using namespace cpns::daemon;

int main(int argc, char** argv) {
    CLI::App app{
        "cpns-frame: encode an Envelope given as JSON into a length-prefixed frame on "
        "stdout, or decode frames from stdin into one JSON object per line."};
    app.require_subcommand(1);
    auto* enc =
        app.add_subcommand("encode", "JSON Envelope (argument or stdin) -> frame on stdout");
    std::string json;
    enc->add_option("json", json, "the Envelope as JSON (proto field names); default: stdin");
    app.add_subcommand("decode", "frames on stdin -> one JSON Envelope per line");
    app.set_version_flag("--version", cpns::version_text("cpns-frame"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    if (*enc) {
        if (json.empty()) json.assign(std::istreambuf_iterator<char>(std::cin), {});
        pb::Envelope env;
        if (!parse_json(json, env)) {
            std::cerr << "cpns-frame: not a JSON Envelope\n";
            return 2;
        }
        const Bytes frame = encode_frame(env);
        std::cout.write(reinterpret_cast<const char*>(frame.data()),
                        static_cast<std::streamsize>(frame.size()));
        return 0;
    }
    std::string input((std::istreambuf_iterator<char>(std::cin)), {});
    FrameReader reader;
    reader.feed(as_bytes(input));
    int frames = 0;
    while (auto r = reader.next()) {
        if (auto* e = std::get_if<DecodeError>(&*r)) {
            std::cerr << "cpns-frame: " << to_string(*e) << " after " << frames << " frame(s)\n";
            return 1;
        }
        std::cout << message_json(std::get<pb::Envelope>(*r)) << "\n";
        ++frames;
    }
    if (reader.buffered() != 0) {
        std::cerr << "cpns-frame: " << reader.buffered() << " byte(s) of an incomplete frame\n";
        return frames ? 0 : 1;
    }
    return 0;
}
