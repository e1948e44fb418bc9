#include "actors/atoms.h"

#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace ds {

std::string to_string(errc e) {
  switch (e) {
    case errc::invalid_request: return "invalid_request";
    case errc::no_worker: return "no_worker";
    case errc::draining: return "draining";
    case errc::wrong_cluster: return "wrong_cluster";
    case errc::internal: return "internal";
    case errc::no_quorum: return "no_quorum";
    case errc::not_found: return "not_found";
  }
  return "unknown";
}

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<GenerateRequest>("ds_generate_request");
  cfg.add_message_type<TokenChunk>("ds_token_chunk");
  cfg.add_message_type<FinalMessage>("ds_final");
  cfg.add_message_type<WorkItem>("ds_work_item");
  cfg.add_message_type<WorkerEvents>("ds_worker_events");
  cfg.add_message_type<WorkerStatus>("ds_worker_status");
  cfg.add_message_type<NodeStatus>("ds_node_status");
  cfg.add_message_type<NodeInfo>("ds_node_info");
  cfg.add_message_type<std::vector<NodeInfo>>("ds_node_infos");
  cfg.add_message_type<ClusterStatus>("ds_cluster_status");
  cfg.add_message_type<MemberInfo>("ds_member_info");
  cfg.add_message_type<MemberView>("ds_member_view");
  cfg.add_error_category(caf::atom("ds"), [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string s = to_string(static_cast<errc>(code));
    if (!ctx.empty() && ctx.match_element<std::string>(0)) s += ": " + ctx.get_as<std::string>(0);
    return s;
  });
}

SamplingParams sampling_params(const GenerateRequest& r) {
  SamplingParams p;
  p.temperature = r.temperature;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.min_p = r.min_p;
  p.repeat_penalty = r.repeat_penalty;
  p.frequency_penalty = r.frequency_penalty;
  p.presence_penalty = r.presence_penalty;
  p.seed = r.seed;
  p.max_tokens = r.max_tokens;
  p.stop = r.stop;
  return p;
}

std::string render_error(const caf::error& e) {
  if (e.category() == caf::atom("ds")) {
    std::string s = to_string(static_cast<errc>(e.code()));
    if (!e.context().empty() && e.context().match_element<std::string>(0)) s += ": " + e.context().get_as<std::string>(0);
    return s;
  }
  return caf::to_string(e);
}

}  // namespace ds
