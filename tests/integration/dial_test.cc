// probe_tcp (actors/dial.h): the bounded reachability probe run before every CAF connect.
// A host that drops packets is covered by PartitionTest (network namespaces).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include <gtest/gtest.h>

#include "actors/dial.h"

namespace ds {
namespace {

using namespace std::chrono_literals;

// A TCP socket bound to 127.0.0.1 on a free port, listening or not.
struct LocalSocket {
  explicit LocalSocket(bool listen) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return;
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    if (listen) ::listen(fd, 4);
  }
  ~LocalSocket() { ::close(fd); }
  int fd = -1;
  uint16_t port = 0;
};

TEST(ProbeTcp, AListeningPortAnswersByNameAndByAddress) {
  LocalSocket s(true);
  ASSERT_NE(s.port, 0);
  EXPECT_TRUE(probe_tcp("127.0.0.1", s.port, 2s).ok());
  EXPECT_TRUE(probe_tcp("localhost", s.port, 2s).ok());
}

TEST(ProbeTcp, AClosedPortIsRefusedAtOnceAndSaysSo) {
  LocalSocket s(false);  // bound, not listening: connections are refused
  ASSERT_NE(s.port, 0);
  const auto t0 = std::chrono::steady_clock::now();
  Status st = probe_tcp("127.0.0.1", s.port, 5s);
  EXPECT_FALSE(st.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_NE(st.message().find("refused"), std::string::npos) << st.message();
}

TEST(ProbeTcp, AnUnknownHostIsAnErrorNamingIt) {
  Status st = probe_tcp("no-such-host.invalid", 4242, 2s);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no-such-host.invalid"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace ds
