#include "actors/client.h"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/system_messages.hpp>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>

#include "actors/atoms.h"
#include "actors/dial.h"

namespace ds::detail {

// One request's stream: the client's stream actor fills it (chunks arrive there, so a busy
// stream wakes one actor thread per batch of messages, not the caller's thread per token);
// the caller's thread waits for the end. Guarded by mu.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::function<void(const TokenChunk&)> on_chunk;  // called on the stream actor's thread, under mu
  GenerateResult res;
  Status st = Status::Ok();
  bool done = false;
  // The node running it died mid-stream: generate() resumes it on another member after the
  // tokens received (lost_reason says why, for the error if it cannot).
  bool lost = false;
  std::string lost_reason;
  caf::actor_addr router;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
};
using StreamPtr = std::shared_ptr<Stream>;

}  // namespace ds::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ds::detail::StreamPtr)  // in-process only: never serialized

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

using detail::Stream;
using detail::StreamPtr;

void finish_stream(Stream& s, Status st) {
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.done) return;
    if (s.st.ok()) s.st = std::move(st);
    s.done = true;
    s.on_chunk = nullptr;
  }
  s.cv.notify_all();
}

struct StreamsState {
  std::map<std::string, StreamPtr> by_id;
  std::set<caf::actor_addr> watched;  // routers monitored
  static inline const char* name = "ds_client_streams";
};

// Receives the streams of every request of one Client: (gen_atom, router, request, stream) ->
// request id; then TokenChunk / FinalMessage from the router; (cancel_atom, id) forgets one.
caf::behavior streams_behavior(caf::stateful_actor<StreamsState>* self, std::chrono::milliseconds timeout) {
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& s = self->state;
    s.watched.erase(dm.source);
    for (auto it = s.by_id.begin(); it != s.by_id.end();) {
      if (it->second->router == dm.source) {
        Stream& st = *it->second;
        {
          std::lock_guard<std::mutex> lock(st.mu);
          if (!st.done) {
            st.lost = true;
            st.lost_reason = "connection to the node lost (" + caf::to_string(dm.reason) + ")";
          }
        }
        st.cv.notify_all();
        it = s.by_id.erase(it);
      } else {
        ++it;
      }
    }
  });
  return {
      [=](gen_atom, const caf::actor& router, GenerateRequest& req, StreamPtr& stream) -> caf::result<std::string> {
        auto& s = self->state;
        stream->router = router.address();
        if (s.watched.insert(router.address()).second) self->monitor(router);
        auto rp = self->make_response_promise<std::string>();
        self->request(router, timeout, gen_atom::value, std::move(req))
            .then(
                [=](std::string& id) mutable {
                  {
                    std::lock_guard<std::mutex> lock(stream->mu);
                    stream->res.id = id;
                  }
                  self->state.by_id[id] = stream;
                  rp.deliver(std::move(id));
                },
                [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
      [=](TokenChunk& c) {
        auto it = self->state.by_id.find(c.id);
        if (it == self->state.by_id.end()) return;
        Stream& s = *it->second;
        std::lock_guard<std::mutex> lock(s.mu);
        // Only the node the stream runs on now: after a resume, a node that was only cut off
        // (not dead) may still send what it had.
        if (self->current_sender() && self->current_sender()->address() != s.router) return;
        s.last = std::chrono::steady_clock::now();
        if (c.seq != s.res.chunks && s.st.ok()) {
          s.st = Status::Internal("stream of " + s.res.id + " broken: chunk " + std::to_string(c.seq) + " after " +
                                  std::to_string(s.res.chunks) + " chunks");
        }
        ++s.res.chunks;
        s.res.tokens.insert(s.res.tokens.end(), c.tokens.begin(), c.tokens.end());
        s.res.text += c.text;
        if (s.on_chunk) s.on_chunk(c);
      },
      [=](FinalMessage& f) {
        auto it = self->state.by_id.find(f.id);
        if (it == self->state.by_id.end()) return;
        if (self->current_sender() && self->current_sender()->address() != it->second->router) return;
        StreamPtr sp = it->second;
        self->state.by_id.erase(it);
        {
          std::lock_guard<std::mutex> lock(sp->mu);
          if (f.chunks != sp->res.chunks && sp->st.ok()) {
            sp->st = Status::Internal("stream of " + sp->res.id + " ended after " + std::to_string(sp->res.chunks) +
                                      " chunks, the node sent " + std::to_string(f.chunks));
          }
          sp->res.finish_reason = f.finish_reason;
          sp->res.error = f.error;
          sp->res.prompt_tokens = std::move(f.prompt_tokens);
          sp->res.ttft_ms = f.ttft_ms;
          sp->res.total_ms = f.total_ms;
          sp->done = true;
          sp->on_chunk = nullptr;
        }
        sp->cv.notify_all();
      },
      [=](cancel_atom, const std::string& id) { self->state.by_id.erase(id); },
  };
}
}  // namespace

struct Client::Impl {
  explicit Impl(const ClientOptions& o) : opts(o), cfg(o.tls) {
    streams = sys.spawn(streams_behavior, opts.connect_timeout);
  }
  ~Impl() { caf::anon_send_exit(streams, caf::exit_reason::user_shutdown); }
  ClientOptions opts;
  ClientConfig cfg;
  caf::actor_system sys{cfg};
  caf::actor streams;  // receives every request's stream (streams_behavior)
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
    // A bounded probe first: the middleman's own connect blocks every later one of this client
    // on a host that drops packets (dial.h), which would stall the move to another member.
    if (Status st = probe_tcp(host, port, opts.connect_timeout); !st.ok())
      return Status::IOError("cannot connect to " + host + ":" + std::to_string(port) + ": " + st.message());
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

bool parse_node_list(const std::string& s, ClientOptions* opts) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    items.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  std::string host;
  uint16_t port = 0;
  for (const std::string& item : items)
    if (!parse_host_port(item, &host, &port)) return false;
  parse_host_port(items[0], &opts->host, &opts->port);
  opts->more_nodes.assign(items.begin() + 1, items.end());
  return true;
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& opts) {
  if (Status st = validate_tls(opts.tls); !st.ok()) return st;
  auto impl = std::make_unique<Impl>(opts);
  // The given node, else the others in turn; the ones not used are failover candidates.
  std::vector<std::string> nodes = {(opts.host.find(':') != std::string::npos ? "[" + opts.host + "]" : opts.host) + ":" +
                                    std::to_string(opts.port)};
  nodes.insert(nodes.end(), opts.more_nodes.begin(), opts.more_nodes.end());
  Status last = Status::IOError("no node to connect to");
  for (size_t i = 0; i < nodes.size() && !impl->router; ++i) {
    std::string host;
    uint16_t port = 0;
    if (!parse_host_port(nodes[i], &host, &port)) {
      last = Status::InvalidArgument("not HOST:PORT: '" + nodes[i] + "'");
      continue;
    }
    auto r = impl->connect(host, port);
    if (!r.ok()) {
      last = r.status();
      continue;
    }
    impl->router = *r;
    impl->address = nodes[i];
    for (size_t j = 0; j < nodes.size(); ++j)
      if (j != i) impl->others.push_back(nodes[j]);
  }
  if (!impl->router) return last;
  impl->learn_members();
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Result<GenerateResult> Client::generate(const GenerateRequest& req, const std::function<void(const TokenChunk&)>& on_chunk,
                                        const std::atomic<bool>* cancel) {
  caf::scoped_actor self{impl_->sys};
  auto stream = std::make_shared<Stream>();
  stream->on_chunk = on_chunk;
  Status st = Status::Ok();
  std::string id;
  caf::actor router;
  // Sent to the current node; when it is gone (or draining, or cut off), to another member.
  for (int attempt = 0;; ++attempt) {
    router = impl_->current();
    bool retry = false;
    st = Status::Ok();
    self->request(impl_->streams, impl_->opts.connect_timeout + std::chrono::seconds(1), gen_atom::value, router, req, stream)
        .receive([&](std::string& rid) { id = std::move(rid); },
                 [&](caf::error& e) {
                   if (e.category() == caf::atom("ds")) st = Status::InvalidArgument(render_error(e));
                   else st = Status::IOError("request failed: " + render_error(e));
                   retry = node_unusable(e);
                 });
    if (st.ok() || !retry || attempt >= 3 || !impl_->fail_over(router)) break;
  }
  if (!st.ok()) return st;
  bool cancel_sent = false;
  int resumes = 0;
  std::unique_lock<std::mutex> lock(stream->mu);
  while (!stream->done) {
    stream->cv.wait_for(lock, std::chrono::milliseconds(100));
    if (stream->done) break;
    if (stream->lost) {
      // The node running the stream died: go on from the tokens received, on another member
      // (the cluster fails over work whose worker dies, but this node held the stream itself).
      stream->lost = false;
      stream->last = std::chrono::steady_clock::now();
      const std::string why = stream->lost_reason;
      GenerateRequest again = req;
      again.id = stream->res.id;
      again.resume_tokens = stream->res.tokens;
      again.resume_seq = stream->res.chunks;
      if (static_cast<int64_t>(again.resume_tokens.size()) >= req.max_tokens) {  // only the end was lost
        stream->res.finish_reason = "length";
        stream->done = true;
        stream->on_chunk = nullptr;
        break;
      }
      lock.unlock();
      Status rs = Status::IOError(why);
      if (++resumes <= 3 && impl_->fail_over(router)) {
        router = impl_->current();
        self->request(impl_->streams, impl_->opts.connect_timeout + std::chrono::seconds(1), gen_atom::value, router,
                      again, stream)
            .receive([&](std::string&) { rs = Status::Ok(); },
                     [&](caf::error& e) { rs = Status::IOError(why + "; resuming on another member failed: " + render_error(e)); });
      } else {
        rs = Status::IOError(why + "; no other member to resume on");
      }
      if (!rs.ok()) finish_stream(*stream, rs);
      lock.lock();
      continue;
    }
    if (cancel && cancel->load() && !cancel_sent) {
      caf::anon_send(router, cancel_atom::value, id);
      cancel_sent = true;
    }
    if (std::chrono::steady_clock::now() - stream->last > impl_->opts.idle_timeout) {
      stream->st = Status::IOError("no message from the node for " + std::to_string(impl_->opts.idle_timeout.count()) + " ms");
      stream->done = true;
      stream->on_chunk = nullptr;  // the caller's callback may not outlive this call
      caf::anon_send(impl_->streams, cancel_atom::value, id);
    }
  }
  if (!stream->st.ok()) return stream->st;
  return stream->res;
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
