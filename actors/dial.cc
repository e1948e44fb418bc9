#include "actors/dial.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace ds {

namespace {

// Connects one resolved address without blocking past `deadline`.
Status probe_one(const addrinfo& ai, std::chrono::steady_clock::time_point deadline) {
  const int fd = ::socket(ai.ai_family, ai.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai.ai_protocol);
  if (fd < 0) return Status::IOError(std::string("socket: ") + std::strerror(errno));
  std::unique_ptr<int, void (*)(int*)> guard(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  if (::connect(fd, ai.ai_addr, ai.ai_addrlen) == 0) return Status::Ok();
  if (errno != EINPROGRESS) return Status::IOError(std::strerror(errno));
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Status::IOError("timed out");
    pollfd p{fd, POLLOUT, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IOError(std::string("poll: ") + std::strerror(errno));
    if (n == 0) return Status::IOError("timed out");
    int err = 0;
    socklen_t len = sizeof(err);
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    return err == 0 ? Status::Ok() : Status::IOError(std::strerror(err));
  }
}

}  // namespace

Status probe_tcp(const std::string& host, uint16_t port, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0) {
    return Status::IOError("cannot resolve '" + host + "': " + ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(res, ::freeaddrinfo);
  Status last = Status::IOError("no address for '" + host + "'");
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    last = probe_one(*ai, deadline);
    if (last.ok()) return last;
    if (std::chrono::steady_clock::now() >= deadline) break;
  }
  if (last.message() == "timed out") {
    return Status::IOError("no answer within " + std::to_string(timeout.count()) +
                           " ms (host down or network partitioned?)");
  }
  return last;
}

}  // namespace ds
