// actors/dial.h: a bounded TCP reachability probe to run before asking CAF to connect.
//
// CAF 0.17's middleman connects with a blocking connect() inside its one (detached) actor. A
// dial to a host that silently drops packets (a network partition, a powered-off machine)
// therefore blocks every later connect of the whole process until the kernel's next SYN
// retransmission succeeds or it gives up (~2 minutes with the default tcp_syn_retries): after a
// partition heals, a node could not redial anyone for 15-60 s. Probing first with a
// non-blocking connect bounded by a timeout keeps the middleman's connects to hosts that have
// just answered a handshake.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "model/status.h"

namespace ds {

// OK when a TCP handshake with host:port completes within `timeout` (the connection is closed
// at once); else why not ("no answer within N ms (...)", "Connection refused", "cannot resolve
// 'HOST': ...").
// Blocks the calling thread for at most about `timeout` plus name resolution.
Status probe_tcp(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);

}  // namespace ds
