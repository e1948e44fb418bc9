#include "actors/client.h"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/system_messages.hpp>

#include <set>

#include "actors/atoms.h"

namespace ds {

namespace {
struct ClientConfig : caf::actor_system_config {
  ClientConfig() {
    register_types(*this);
    load<caf::io::middleman>();
    set("scheduler.max-threads", 2);
    // Nodes refuse peers of another application id, and drop connections that stay
    // silent past their connection timeout: send heartbeats like a node does.
    set("middleman.app-identifiers", std::vector<std::string>{"ds-v1"});
    set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(250)});
  }
};
}  // namespace

struct Client::Impl {
  ClientConfig cfg;
  caf::actor_system sys{cfg};
  caf::actor router;
  ClientOptions opts;
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() = default;

bool parse_host_port(const std::string& s, std::string* host, uint16_t* port) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size()) return false;
  std::string h = s.substr(0, colon);
  if (h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  try {
    size_t used = 0;
    const int p = std::stoi(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1 || p <= 0 || p > 65535) return false;
    *port = static_cast<uint16_t>(p);
  } catch (...) {
    return false;
  }
  *host = h;
  return !h.empty();
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& opts) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  caf::scoped_actor self{impl->sys};
  Status st = Status::IOError("cannot connect to " + opts.host + ":" + std::to_string(opts.port));
  self->request(impl->sys.middleman().actor_handle(), opts.connect_timeout, caf::connect_atom::value, opts.host, opts.port)
      .receive(
          [&](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) {
            impl->router = caf::actor_cast<caf::actor>(p);
            if (impl->router) st = Status::Ok();
            else st = Status::IOError("no ds node at " + opts.host + ":" + std::to_string(opts.port));
          },
          [&](caf::error& e) { st = Status::IOError("cannot connect to " + opts.host + ":" + std::to_string(opts.port) + ": " + caf::to_string(e)); });
  if (!st.ok()) return st;
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<GenerateResult> Client::generate(const GenerateRequest& req, const std::function<void(const TokenChunk&)>& on_chunk,
                                        const std::atomic<bool>* cancel) {
  caf::scoped_actor self{impl_->sys};
  self->monitor(impl_->router);
  GenerateResult res;
  Status st = Status::Ok();
  self->request(impl_->router, impl_->opts.connect_timeout, gen_atom::value, req)
      .receive([&](std::string& id) { res.id = std::move(id); },
               [&](caf::error& e) {
                 if (e.category() == caf::atom("ds")) st = Status::InvalidArgument(render_error(e));
                 else st = Status::IOError("request failed: " + render_error(e));
               });
  if (!st.ok()) return st;
  bool done = false, cancel_sent = false;
  auto last = std::chrono::steady_clock::now();
  while (!done) {
    self->receive(
        [&](TokenChunk& c) {
          last = std::chrono::steady_clock::now();
          if (c.id != res.id) return;
          if (c.seq != res.chunks) {
            st = Status::Internal("stream of " + res.id + " broken: chunk " + std::to_string(c.seq) + " after " +
                                  std::to_string(res.chunks) + " chunks");
          }
          ++res.chunks;
          res.tokens.insert(res.tokens.end(), c.tokens.begin(), c.tokens.end());
          res.text += c.text;
          if (on_chunk) on_chunk(c);
        },
        [&](FinalMessage& f) {
          if (f.id != res.id) return;
          if (f.chunks != res.chunks && st.ok()) {
            st = Status::Internal("stream of " + res.id + " ended after " + std::to_string(res.chunks) + " chunks, the node sent " +
                                  std::to_string(f.chunks));
          }
          res.finish_reason = f.finish_reason;
          res.error = f.error;
          res.prompt_tokens = std::move(f.prompt_tokens);
          res.ttft_ms = f.ttft_ms;
          res.total_ms = f.total_ms;
          done = true;
        },
        [&](caf::down_msg& dm) {
          st = Status::IOError("connection to the node lost (" + caf::to_string(dm.reason) + ")");
          done = true;
        },
        caf::after(std::chrono::milliseconds(100)) >> [&] {
          if (std::chrono::steady_clock::now() - last > impl_->opts.idle_timeout) {
            st = Status::IOError("no message from the node for " + std::to_string(impl_->opts.idle_timeout.count()) + " ms");
            done = true;
          }
        });
    // Checked after every message: a busy stream never lets the idle timeout fire.
    if (!done && cancel && cancel->load() && !cancel_sent) {
      self->send(impl_->router, cancel_atom::value, res.id);
      cancel_sent = true;
    }
  }
  if (!st.ok()) return st;
  return res;
}

Result<NodeStatus> Client::status() {
  caf::scoped_actor self{impl_->sys};
  Result<NodeStatus> out = Status::IOError("no answer");
  self->request(impl_->router, std::chrono::seconds(10), status_atom::value)
      .receive([&](NodeStatus& ns) { out = std::move(ns); },
               [&](caf::error& e) { out = Status::IOError("status request failed: " + render_error(e)); });
  return out;
}

}  // namespace ds

namespace ds {

Result<ClusterStatus> Client::cluster_status() {
  caf::scoped_actor self{impl_->sys};
  Result<ClusterStatus> out = Status::IOError("no answer");
  self->request(impl_->router, std::chrono::seconds(10), cstatus_atom::value)
      .receive([&](ClusterStatus& cs) { out = std::move(cs); },
               [&](caf::error& e) { out = Status::IOError("cluster status request failed: " + render_error(e)); });
  return out;
}

}  // namespace ds
