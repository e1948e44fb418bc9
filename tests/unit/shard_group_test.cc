// ShardGroup's step timeout (model/shard_group.h, "Hang"): a rank that hangs, in its health
// check or outside a collective the others wait in, fails the step within the timeout plus
// the grace period, naming the rank; the ranks blocked in a collective are released by the
// abort; the group stays failed; destruction joins every thread once the hang ends, and
// abandons (detaches) a thread that does not end. A slow step that finishes is no hang.
#include "model/shard_group.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "model/mkmodel.h"
#include "test_util.h"

namespace ds {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::shared_ptr<const Model> tiny_model() {
  static test::TempDir dir;
  static std::shared_ptr<const Model> model;
  if (!model) {
    const std::string path = dir.file("tp.gguf");
    const Status s = write_random_model(test::tp_spec("llama", DType::kF32, 7), path);
    EXPECT_TRUE(s.ok()) << s.ToString();
    auto m = Model::Load(path);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (m.ok()) model = std::shared_ptr<const Model>(*m);
  }
  return model;
}

// Threads of this process now.
int thread_count() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Waits (bounded) until the process has `want` threads; the count it saw last.
int wait_for_threads(int want) {
  const auto until = Clock::now() + 5s;
  int n = thread_count();
  while (n != want && Clock::now() < until) {
    std::this_thread::sleep_for(5ms);
    n = thread_count();
  }
  return n;
}

// A hang the test ends: wait() blocks until open().
class Gate {
 public:
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int waiting() {
    std::lock_guard<std::mutex> lock(mu_);
    return waiting_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int waiting_ = 0;
};

// A rank whose next collective, once armed, hangs before it reaches the group: the
// other ranks wait in that collective for it.
class HangingComm final : public Communicator {
 public:
  HangingComm(std::unique_ptr<Communicator> inner, std::shared_ptr<Gate> gate, std::shared_ptr<std::atomic<bool>> armed)
      : inner_(std::move(inner)), gate_(std::move(gate)), armed_(std::move(armed)) {}
  const char* name() const override { return "hanging"; }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  bool all_reduce_sum(float* buf, size_t n) override { return enter() && inner_->all_reduce_sum(buf, n); }
  bool all_gather(const float* send, size_t n, float* recv) override { return enter() && inner_->all_gather(send, n, recv); }
  bool broadcast(float* buf, size_t n, int root) override { return enter() && inner_->broadcast(buf, n, root); }
  void abort() override { inner_->abort(); }
  const std::string& last_error() const override { return inner_->last_error(); }

 private:
  bool enter() {
    if (armed_->exchange(false)) gate_->wait();
    return true;
  }
  std::unique_ptr<Communicator> inner_;
  std::shared_ptr<Gate> gate_;
  std::shared_ptr<std::atomic<bool>> armed_;
};

// n ranks on one-thread CPU backends and a CPU communicator group; health[r] / comm_of(r,
// comm) customize a rank.
std::unique_ptr<ShardGroup> make_group(
    int n, std::chrono::milliseconds timeout, std::vector<std::function<Status()>> health = {},
    std::function<std::unique_ptr<Communicator>(int, std::unique_ptr<Communicator>)> comm_of = nullptr) {
  auto comms = make_cpu_comm_group(n);
  std::vector<ShardRank> ranks(n);
  for (int r = 0; r < n; ++r) {
    ranks[r].backend = make_cpu_backend({1});
    ranks[r].comm = comm_of ? comm_of(r, std::move(comms[r])) : std::move(comms[r]);
    if (r < static_cast<int>(health.size())) ranks[r].health = std::move(health[r]);
  }
  auto g = ShardGroup::Create(tiny_model(), std::move(ranks), 4, 16, 8, timeout);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  return g.ok() ? std::move(g).value() : nullptr;
}

// Steps one sequence through the group: a 3-token prefill, then one token per step.
class Stepper {
 public:
  explicit Stepper(ShardGroup& g) : g_(g) { EXPECT_TRUE(g.kv().blocks().allocate(4, &blocks_)); }
  Status step() {
    std::vector<ForwardToken> batch;
    const int n = pos_ == 0 ? 3 : 1;
    for (int i = 0; i < n; ++i, ++pos_) batch.push_back({(pos_ * 37 + 5) % 300, pos_, &blocks_, i == n - 1});
    return g_.run(batch, &logits_);
  }

 private:
  ShardGroup& g_;
  std::vector<int32_t> blocks_;
  std::vector<float> logits_;
  int32_t pos_ = 0;
};

// Runs one step; the time it took in *ms.
Status timed_step(Stepper& s, int64_t* ms) {
  const auto t0 = Clock::now();
  Status st = s.step();
  *ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  return st;
}

TEST(ShardGroupWatchdog, AHungHealthCheckFailsTheStepNamingTheRank) {
  const int threads_before = thread_count();
  auto gate = std::make_shared<Gate>();
  int checks = 0;  // rank 1's thread only
  {
    auto g = make_group(2, 300ms, {{}, [gate, &checks] {
                                     if (++checks == 3) gate->wait();
                                     return Status::Ok();
                                   }});
    ASSERT_TRUE(g);
    EXPECT_EQ(thread_count(), threads_before + 2);  // rank 1 and the watchdog
    Stepper s(*g);
    ASSERT_TRUE(s.step().ok());
    ASSERT_TRUE(s.step().ok());
    int64_t ms = 0;
    const Status st = timed_step(s, &ms);
    EXPECT_EQ(st.ToString(), "Internal: tensor-parallel rank 1 of 2 did not finish step 3 within 300 ms (hung); group aborted");
    EXPECT_GE(ms, 300);
    EXPECT_LT(ms, 5000);  // deadline 300 ms + grace 300 ms, with room for a loaded machine
    EXPECT_EQ(gate->waiting(), 1);
    EXPECT_TRUE(g->failed());
    EXPECT_EQ(g->failure().message(), st.message());
    // Refused without running anything (rank 1 is still stuck; rank 0 would fail at once).
    EXPECT_EQ(s.step().message(), st.message());
    gate->open();  // the hang ends: destruction joins rank 1
  }
  EXPECT_EQ(checks, 3);
  EXPECT_EQ(wait_for_threads(threads_before), threads_before);
}

TEST(ShardGroupWatchdog, ARankStuckOutsideACollectiveIsNamedAndTheRanksWaitingInItAreReleased) {
  const int threads_before = thread_count();
  auto gate = std::make_shared<Gate>();
  auto armed = std::make_shared<std::atomic<bool>>(false);
  {
    auto g = make_group(4, 300ms, {}, [&](int r, std::unique_ptr<Communicator> c) -> std::unique_ptr<Communicator> {
      if (r != 1) return c;
      return std::make_unique<HangingComm>(std::move(c), gate, armed);
    });
    ASSERT_TRUE(g);
    Stepper s(*g);
    ASSERT_TRUE(s.step().ok());
    ASSERT_TRUE(s.step().ok());
    armed->store(true);  // rank 1 never reaches its next collective; ranks 0, 2, 3 wait in it
    int64_t ms = 0;
    const Status st = timed_step(s, &ms);
    // Rank 0 (this thread) and ranks 2 and 3 were blocked in the collective: only the
    // abort could release them, and the message says they came back.
    EXPECT_EQ(st.ToString(),
              "Internal: tensor-parallel rank 1 of 4 did not finish step 3 within 300 ms (hung); group aborted; "
              "ranks 0, 2, 3 returned after the abort");
    EXPECT_GE(ms, 300);
    EXPECT_LT(ms, 5000);
    EXPECT_EQ(gate->waiting(), 1);
    EXPECT_TRUE(g->failed());
    EXPECT_EQ(s.step().message(), st.message());
    gate->open();  // rank 1 goes on into the aborted collective, fails and reports
  }
  EXPECT_EQ(wait_for_threads(threads_before), threads_before);
}

TEST(ShardGroupWatchdog, ASlowStepThatFinishesIsNoHang) {
  // Every step of rank 1 takes ~120 ms of a 400 ms deadline; the first takes 1.5 s, more
  // than the deadline but within the first step's (10 x 400 ms: warm-up).
  int checks = 0;
  auto g = make_group(2, 400ms, {{}, [&checks] {
                                   std::this_thread::sleep_for(++checks == 1 ? 1500ms : 120ms);
                                   return Status::Ok();
                                 }});
  ASSERT_TRUE(g);
  Stepper s(*g);
  for (int k = 0; k < 5; ++k) {
    const Status st = s.step();
    ASSERT_TRUE(st.ok()) << "step " << k + 1 << ": " << st.ToString();
  }
  EXPECT_FALSE(g->failed());
}

TEST(ShardGroupWatchdog, DestructionAbandonsARankThatNeverReturns) {
  const int threads_before = thread_count();
  auto gate = std::make_shared<Gate>();
  auto checks = std::make_shared<std::atomic<int>>(0);
  auto g = make_group(2, 200ms, {{}, [gate, checks] {
                                   if (++*checks == 2) gate->wait();
                                   return Status::Ok();
                                 }});
  ASSERT_TRUE(g);
  {
    Stepper s(*g);
    ASSERT_TRUE(s.step().ok());
    const Status st = s.step();
    EXPECT_NE(st.message().find("rank 1 of 2 did not finish step 2 within 200 ms (hung)"), std::string::npos) << st.message();
  }  // the step's tokens and block table are gone; the stuck rank runs on its own copy
  const auto t0 = Clock::now();
  g.reset();  // waits the grace period (200 ms) for rank 1, then detaches it
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(thread_count(), threads_before + 1);  // rank 1, still in its health check
  gate->open();  // it returns, frees its rank and exits
  EXPECT_EQ(wait_for_threads(threads_before), threads_before);
  EXPECT_EQ(checks->load(), 2);
}

TEST(ShardGroupWatchdog, AGroupThatFailsToBuildDestructsAtOnce) {
  const int threads_before = thread_count();
  auto comms = make_cpu_comm_group(2);
  std::vector<ShardRank> ranks(2);
  for (int r = 0; r < 2; ++r) {
    ranks[r].backend = make_cpu_backend({1});
    ranks[r].comm = std::move(comms[r]);
  }
  auto g = ShardGroup::Create(tiny_model(), std::move(ranks), 4, 16, /*max_tokens=*/0, 300ms);  // rank 0's Forward fails
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(thread_count(), threads_before);
}

TEST(ShardGroupWatchdog, NoTimeoutNoWatchdogAndANegativeOneIsRefused) {
  const int threads_before = thread_count();
  auto g = make_group(2, 0ms);
  ASSERT_TRUE(g);
  EXPECT_EQ(thread_count(), threads_before + 1);  // rank 1 only
  Stepper s(*g);
  EXPECT_TRUE(s.step().ok());
  g.reset();
  EXPECT_EQ(thread_count(), threads_before);

  auto comms = make_cpu_comm_group(2);
  std::vector<ShardRank> ranks(2);
  for (int r = 0; r < 2; ++r) {
    ranks[r].backend = make_cpu_backend({1});
    ranks[r].comm = std::move(comms[r]);
  }
  auto bad = ShardGroup::Create(tiny_model(), std::move(ranks), 4, 16, 8, -1ms);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().ToString(), "InvalidArgument: the tensor-parallel step timeout must be >= 0 ms (0: none), got -1");
}

}  // namespace
}  // namespace ds
