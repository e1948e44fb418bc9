#include "actors/client.h"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/system_messages.hpp>

#include <algorithm>
#include <mutex>
#include <set>

#include "actors/atoms.h"

namespace ds {

namespace {
struct ClientConfig : caf::actor_system_config {
  explicit ClientConfig(const TlsOptions& tls) {
    register_types(*this);
    load<caf::io::middleman>();
    set("scheduler.max-threads", 2);
    // Idle threads sleep instead of polling: a client shares the machine with others' work.
    set("scheduler.policy", caf::atom("sharing"));
    // Nodes refuse peers of another application id, and drop connections that stay
    // silent past their connection timeout: send heartbeats like a node does.
    set("middleman.app-identifiers", std::vector<std::string>{"ds-v1"});
    set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(250)});
    apply_tls(*this, tls);
  }
};
}  // namespace

struct Client::Impl {
  explicit Impl(const ClientOptions& o) : opts(o), cfg(o.tls) {}
  ClientOptions opts;
  ClientConfig cfg;
  caf::actor_system sys{cfg};
  mutable std::mutex mu;
  caf::actor router;                   // guarded by mu
  std::string address;                 // guarded by mu: host:port of router
  std::vector<std::string> others;     // guarded by mu: other live members' addresses

  caf::actor current() const {
    std::lock_guard<std::mutex> lock(mu);
    return router;
  }
  // Connects to host:port; the router there or an error.
  Result<caf::actor> connect(const std::string& host, uint16_t port) {
    caf::scoped_actor self{sys};
    Result<caf::actor> out = Status::IOError("cannot connect to " + host + ":" + std::to_string(port));
    self->request(connector(sys), opts.connect_timeout, caf::connect_atom::value, host, port)
        .receive(
            [&](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) {
              auto r = caf::actor_cast<caf::actor>(p);
              if (r) out = r;
              else out = Status::IOError("no ds node at " + host + ":" + std::to_string(port));
            },
            [&](caf::error& e) {
              out = Status::IOError("cannot connect to " + host + ":" + std::to_string(port) + ": " + caf::to_string(e));
            });
    return out;
  }
  // Learns the other live members from the current node (best effort).
  void learn_members() {
    caf::actor r = current();
    caf::scoped_actor self{sys};
    self->request(r, std::chrono::seconds(3), members_atom::value)
        .receive(
            [&](MemberView& v) {
              std::vector<std::string> others;
              for (const MemberInfo& m : v.members)
                if (m.node_id != v.self_id && m.state == "up" && m.reachable && !m.address.empty()) others.push_back(m.address);
              std::lock_guard<std::mutex> lock(mu);
              if (!others.empty()) this->others = std::move(others);
            },
            [](caf::error&) {});
  }
  // The current node is gone: switch to another member. False when none answers.
  bool fail_over(const caf::actor& dead) {
    std::vector<std::string> candidates;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (router != dead) return true;  // another thread switched already
      candidates = others;
    }
    for (const std::string& a : candidates) {
      std::string host;
      uint16_t port = 0;
      if (!parse_host_port(a, &host, &port)) continue;
      auto r = connect(host, port);
      if (!r.ok()) continue;
      {
        std::lock_guard<std::mutex> lock(mu);
        router = *r;
        others.erase(std::remove(others.begin(), others.end(), a), others.end());
        others.push_back(address);  // it may come back
        address = a;
      }
      learn_members();
      return true;
    }
    return false;
  }
};

namespace {
// Errors that say the node itself is gone or will not take work here (try another member).
bool node_unusable(const caf::error& e) {
  if (e.category() == caf::atom("ds")) {
    const auto c = static_cast<errc>(e.code());
    return c == errc::draining || c == errc::no_quorum;
  }
  return e.category() == caf::atom("system");
}
}  // namespace

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
  if (Status st = validate_tls(opts.tls); !st.ok()) return st;
  auto impl = std::make_unique<Impl>(opts);
  auto r = impl->connect(opts.host, opts.port);
  if (!r.ok()) return r.status();
  impl->router = *r;
  impl->address = (opts.host.find(':') != std::string::npos ? "[" + opts.host + "]" : opts.host) + ":" + std::to_string(opts.port);
  impl->learn_members();
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<GenerateResult> Client::generate(const GenerateRequest& req, const std::function<void(const TokenChunk&)>& on_chunk,
                                        const std::atomic<bool>* cancel) {
  caf::scoped_actor self{impl_->sys};
  GenerateResult res;
  Status st = Status::Ok();
  caf::actor router;
  // Sent to the current node; when it is gone (or draining, or cut off), to another member.
  for (int attempt = 0;; ++attempt) {
    router = impl_->current();
    bool retry = false;
    st = Status::Ok();
    self->request(router, impl_->opts.connect_timeout, gen_atom::value, req)
        .receive([&](std::string& id) { res.id = std::move(id); },
                 [&](caf::error& e) {
                   if (e.category() == caf::atom("ds")) st = Status::InvalidArgument(render_error(e));
                   else st = Status::IOError("request failed: " + render_error(e));
                   retry = node_unusable(e);
                 });
    if (st.ok() || !retry || attempt >= 3 || !impl_->fail_over(router)) break;
  }
  if (!st.ok()) return st;
  self->monitor(router);
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
      self->send(router, cancel_atom::value, res.id);
      cancel_sent = true;
    }
  }
  if (!st.ok()) return st;
  return res;
}

Result<NodeStatus> Client::status() {
  caf::scoped_actor self{impl_->sys};
  Result<NodeStatus> out = Status::IOError("no answer");
  self->request(impl_->current(), std::chrono::seconds(10), status_atom::value)
      .receive([&](NodeStatus& ns) { out = std::move(ns); },
               [&](caf::error& e) { out = Status::IOError("status request failed: " + render_error(e)); });
  return out;
}

}  // namespace ds

namespace ds {

Result<ClusterStatus> Client::cluster_status() {
  caf::scoped_actor self{impl_->sys};
  Result<ClusterStatus> out = Status::IOError("no answer");
  self->request(impl_->current(), std::chrono::seconds(10), cstatus_atom::value)
      .receive([&](ClusterStatus& cs) { out = std::move(cs); },
               [&](caf::error& e) { out = Status::IOError("cluster status request failed: " + render_error(e)); });
  return out;
}

Result<MemberView> Client::members() {
  caf::scoped_actor self{impl_->sys};
  Result<MemberView> out = Status::IOError("no answer");
  self->request(impl_->current(), std::chrono::seconds(10), members_atom::value)
      .receive([&](MemberView& v) { out = std::move(v); },
               [&](caf::error& e) { out = Status::IOError("members request failed: " + render_error(e)); });
  if (out.ok()) impl_->learn_members();
  return out;
}

namespace {
template <class... Ts>
Status admin_call(caf::actor_system& sys, const caf::actor& router, Ts&&... xs) {
  caf::scoped_actor self{sys};
  Status st = Status::IOError("no answer");
  self->request(router, std::chrono::seconds(10), std::forward<Ts>(xs)...)
      .receive([&](bool) { st = Status::Ok(); },
               [&](caf::error& e) {
                 if (e.category() == caf::atom("ds") && static_cast<errc>(e.code()) == errc::not_found) st = Status::NotFound(render_error(e));
                 else if (e.category() == caf::atom("ds")) st = Status::InvalidArgument(render_error(e));
                 else st = Status::IOError(render_error(e));
               });
  return st;
}
}  // namespace

Status Client::drain_node(const std::string& node_id) {
  return admin_call(impl_->sys, impl_->current(), dnode_atom::value, node_id);
}

Status Client::remove_node(const std::string& node_id) {
  return admin_call(impl_->sys, impl_->current(), remove_atom::value, node_id);
}

std::string Client::node_address() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->address;
}

}  // namespace ds
