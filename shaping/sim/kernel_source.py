"""The C++ source of the simulator's CPU kernel (built and loaded by shaping.sim.cpu_kernel), as a string.

Why a Python module and not a .cpp file: Flower's app bundle (FAB), which `flwr run` ships to every
SuperNode, keeps only the files its built-in patterns allow (flwr 1.42: *.py, *.toml, *.md, *.yaml, *.yml,
*.json, *.jsonl, LICENSE; ``fab-include`` can narrow them, not widen them). A .cpp file never reached a
deployed ClientApp, so every one of them ran the torch sub-step instead (a 3-node SecAgg+ round took
98-100 s against about 2 s in simulation). As a module the source travels with the code that builds it,
in the bundle and in the wheel alike.

The torch function ``shaping.sim.simulator.substep`` is the reference; tests/sim/test_cpu_kernel.py
checks the two against each other.
"""

SUBSTEPS_CPP = r"""// The simulator's fluid sub-steps as one CPU kernel: shaping.sim.simulator.substep, repeated
// `substeps` times, for blocks of W environments whose classes stay in cache across all of them.
//
// Why it exists: compiled by torch.compile, the sub-step is a few loop nests over the whole batch
// with intermediate buffers between them, and it ran at under half the CPU target (docs/simulator.md
// section 13). Here each block of W environments runs every sub-step of the interval with its state
// in a few KiB, each operation one vector instruction over the W lanes.
//
// The torch function is the reference: this file mirrors it line by line (same operations in the
// same order, float32), and tests/sim/test_cpu_kernel.py checks the two against each other.
// Layout as in the simulator: class arrays are (K, C, B) (batch last), queue arrays (P * 4, B), path
// arrays (P, B) (a path's capacity, EF limit and loss change with each environment's scheduled events).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int W = 8;  // environments per block: one AVX2 register of float32
constexpr int NQ = 4;  // provider queues per path: EF, AF-high, AF-low, best effort

// Per-class inputs, constant over the interval, each with its own strides (see fedshape_substeps).
enum Input {
  IN_APP_RATE, IN_IS_TCP, IN_RATE, IN_CEIL, IN_PATH_KBIT_C, IN_BASE_DELAY,
  IN_DROP, IN_CODEL, IN_PKT, IN_CS2, IN_TX_TENANT, IN_TX_PATH, IN_LEAF, IN_DEADLINE, IN_FLOWS,
  IN_BITRATE, IN_CAP, N_INPUTS
};
// The carry, (K, C, B) each: the state carried across intervals (read and written), then the
// interval's accumulators (written; they start at zero).
enum State {
  ST_QT, ST_QP, ST_WIN, ST_RTT, ST_BUF, ST_ABOVE, ST_DROP_COUNT, N_CARRIED, ST_OFFERED = N_CARRIED,
  ST_DELIVERED, ST_LOST, ST_DELAY_VOL, ST_ON_TIME, ST_P99, ST_REBUFFER, ST_ADMITTED, ST_DROPPED, N_STATES
};
// Per-path inputs, (P, B) each.
enum PathInput { PI_KBIT, PI_EF_LIMIT, PI_LOSS, N_PATH_INPUTS };
// Scalars, so that the constants have one definition (in Python).
enum Param {
  P_DT, P_CODEL_KEEP, P_CODEL_TARGET, P_CODEL_INTERVAL, P_MSS, P_LN100, P_BUF_MAX, P_EPS, P_RHO_MAX,
  P_MAX_DELAY, N_PARAMS
};
// Per-class scratch of one block, each (N, W).
enum Scratch {
  S_OFF, S_NFT, S_DEM, S_G, S_EX, S_SERVED, S_TDELAY, S_OVF, S_CDROP, S_XADM, S_DELIV, S_OVP,
  S_PLOST, S_FLUID, S_RHO, S_RWT, S_RWP, N_SCRATCH
};

// W lanes of float32 and int32: GCC/Clang vector extensions, so every operation below is one
// vector instruction (auto-vectorizing the lane loops failed on the nested loops over classes).
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

struct Dims {
  int k, c, p;
  int64_t b;
};

inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf splat(float x) { return vf{} + x; }
inline vf vsqrt(vf x) {
  vf r{};
  for (int w = 0; w < W; ++w) r[w] = std::sqrt(x[w]);
  return r;
}
// exp of a non-positive argument. Below -87 float32's exp is denormal or 0, which 1 - exp(x)
// cannot tell from 0; clamping there keeps libm off its slow underflow path (15% of a profile).
#if defined(FEDSHAPE_LIBMVEC) && defined(__AVX2__) && defined(__x86_64__)
// glibc's vector expf (libmvec, AVX2 variant).
extern "C" vf _ZGVdN8v_expf(vf);
inline vf vexp_neg(vf x) { return _ZGVdN8v_expf(vmax(x, splat(-87.0f))); }
#else
inline vf vexp_neg(vf x) {
  vf r{};
  for (int w = 0; w < W; ++w) r[w] = std::exp(std::max(x[w], -87.0f));
  return r;
}
#endif

struct Block {
  // What one block of W environments works on: its rows of the tile (inputs, priority, state,
  // queue and path indices, path_served) and its own scratch, class arrays (N) and queue, path
  // and tenant arrays.
  vf* in[N_INPUTS];
  vf* priority;
  vf* st[N_STATES];
  vi* queue;
  vi* path;
  vf* path_served;
  vf* path_in[N_PATH_INPUTS];
  vf* sc[N_SCRATCH];
  vf *arr_q, *back_q, *admit_q, *dem_q, *serv_q, *frac_q, *over_q, *kept_q, *delay_q, *util_q;
  vf *w0_path, *rho_ef, *rho_all, *own, *total, *spare, *w0_t;
  std::vector<vf> storage;  // over-aligned: C++17's aligned new

  Block(const Dims& d) {
    const size_t n = size_t(d.k) * d.c, q = size_t(d.p) * NQ;
    storage.assign(n * N_SCRATCH + q * 10 + d.p * 3 + size_t(d.k) * d.p + d.k * 3, vf{});
    vf* at = storage.data();
    auto take = [&](size_t count) {
      vf* x = at;
      at += count;
      return x;
    };
    for (auto& x : sc) x = take(n);
    for (vf** x : {&arr_q, &back_q, &admit_q, &dem_q, &serv_q, &frac_q, &over_q, &kept_q, &delay_q, &util_q})
      *x = take(q);
    w0_path = take(d.p);
    rho_ef = take(d.p);
    rho_all = take(d.p);
    own = take(size_t(d.k) * d.p);
    total = take(d.k);
    spare = take(d.k);
    w0_t = take(d.k);
  }
};

// out[q] = sum over n with index[n] == q of x[n], lane by lane, in the order of n (as scatter_add).
inline void scatter(vf* out, const vf* x, const vi* index, int n_items, int n_values) {
  for (int q = 0; q < n_values; ++q) out[q] = vf{};
  for (int n = 0; n < n_items; ++n)
    for (int q = 0; q < n_values; ++q) out[q] += index[n] == q ? x[n] : vf{};
}

// For class n of the tenant whose classes start at `first`: the sums of x over the tenant's classes
// of strictly higher priority (lower value) and of the same priority (network.over_classes with the
// masks of network.priority_masks).
inline void by_priority(const vf* priority, const vf* x, int first, int C, int n, vf& higher, vf& same) {
  const vf pr = priority[n];
  higher = vf{};
  same = vf{};
  for (int o = first; o < first + C; ++o) {
    higher += priority[o] < pr ? x[o] : vf{};
    same += priority[o] == pr ? x[o] : vf{};
  }
}

// Cobham's wait: w0 * dt / ((1 - min(before, rho_max)) (1 - min(through, rho_max))).
inline vf priority_wait(vf w0, vf before, vf through, float dt, vf rho_max) {
  vf a = 1.0f - vmin(before, rho_max);
  vf c = 1.0f - vmin(through, rho_max);
  return w0 * dt / (a * c);
}

inline vf residual_work(vf served, vf pkt, vf cs2, vf link) {
  return served * pkt * (1.0f + cs2) / (2.0f * link * link);
}

void substep(Block& s, const Dims& d, const float* prm, const float* buffer, const float* af) {
  const int K = d.k, C = d.c, P = d.p, N = K * C, Q = P * NQ;
  const float dt = prm[P_DT];
  const vf eps = splat(prm[P_EPS]), rho_max = splat(prm[P_RHO_MAX]), max_delay = splat(prm[P_MAX_DELAY]);
  const vf zero{}, one = splat(1.0f);
  vf **in = s.in, **st = s.st, **sc = s.sc;
  const vf *path_kbit = s.path_in[PI_KBIT], *ef_limit = s.path_in[PI_EF_LIMIT], *path_loss = s.path_in[PI_LOSS];

  // Tenant stage: HTB (shaping.sim.network.htb_stage) and CoDel.
  for (int n = 0; n < N; ++n) {
    vf app = in[IN_APP_RATE][n];
    vf rate = in[IN_IS_TCP][n] != 0.0f ? vmin(st[ST_WIN][n] / st[ST_RTT][n], app) : app;
    vf off = rate * dt;
    vf nft = off * in[IN_DROP][n];
    vf dem = st[ST_QT][n] + (off - nft);
    sc[S_OFF][n] = off;
    sc[S_NFT][n] = nft;
    sc[S_DEM][n] = dem;
    sc[S_G][n] = vmin(dem, in[IN_RATE][n]);
  }
  for (int k = 0; k < K; ++k) {
    vf t = zero;
    for (int c = 0; c < C; ++c) t += sc[S_G][k * C + c];
    vf cap = in[IN_CAP][k * C];
    s.total[k] = t;
    s.spare[k] = vmax(cap - vmin(t, cap), zero);
    vf scale = vmin(cap / vmax(t, eps), one);
    for (int c = 0; c < C; ++c) {
      const int n = k * C + c;
      vf g = sc[S_G][n] * scale;
      sc[S_G][n] = g;
      sc[S_EX][n] = vmin(sc[S_DEM][n] - g, vmax(in[IN_CEIL][n] - in[IN_RATE][n], zero));
    }
    for (int c = 0; c < C; ++c) {
      const int n = k * C + c;
      vf before, level;  // excess demand of the higher priorities, and of the class's own level
      by_priority(s.priority, sc[S_EX], k * C, C, n, before, level);
      vf share = vmin(vmax(s.spare[k] - before, zero) / vmax(level, eps), one);
      vf served = sc[S_G][n] + sc[S_EX][n] * share;
      vf left = sc[S_DEM][n] - served;
      vf ovf = vmax(left - in[IN_LEAF][n], zero);
      left = left - ovf;
      vf tdelay = vmin(left * dt / vmax(served, eps), max_delay);
      // CoDel's control law (see the Python reference for why the count fades).
      vf above = tdelay > prm[P_CODEL_TARGET] ? st[ST_ABOVE][n] + dt : zero;
      vi dropping = (above >= prm[P_CODEL_INTERVAL]) & (in[IN_CODEL][n] != 0.0f);
      vf count = st[ST_DROP_COUNT][n];
      vf n_drop = dt * vsqrt(count + 1.0f) / prm[P_CODEL_INTERVAL];
      vf cdrop = dropping ? vmin(left, n_drop * in[IN_PKT][n]) : zero;
      st[ST_DROP_COUNT][n] = dropping ? count + n_drop : count * prm[P_CODEL_KEEP];
      st[ST_ABOVE][n] = above;
      st[ST_QT][n] = left - cdrop;
      sc[S_SERVED][n] = served;
      sc[S_TDELAY][n] = tdelay;
      sc[S_OVF][n] = ovf;
      sc[S_CDROP][n] = cdrop;
    }
  }

  // Provider stage (shaping.sim.network.provider_stage): EF strict and policed, WFQ of the rest.
  scatter(s.arr_q, sc[S_SERVED], s.queue, N, Q);
  scatter(s.back_q, st[ST_QP], s.queue, N, Q);
  for (int q = 0; q < Q; ++q) {
    vf admit = q % NQ == 0 ? vmin(ef_limit[q / NQ] / vmax(s.arr_q[q], eps), one) : one;
    s.admit_q[q] = admit;
    s.dem_q[q] = s.back_q[q] + s.arr_q[q] * admit;
  }
  for (int p = 0; p < P; ++p) {
    const vf cap = path_kbit[p];
    const float* wt = af + 3 * p;
    const vf* dq = s.dem_q + p * NQ;
    vf ef = vmin(dq[0], cap);
    // Water-filling in three passes (shaping.sim.network.wfq_serve).
    vf sv[3] = {zero, zero, zero}, act[3] = {one, one, one};
    vf left = cap - ef;
    for (int it = 0; it < 3; ++it) {
      vf wa[3] = {wt[0] * act[0], wt[1] * act[1], wt[2] * act[2]};
      vf wsum = vmax(wa[0] + wa[1] + wa[2], eps);
      vf add[3];
      for (int i = 0; i < 3; ++i) {
        add[i] = vmin(dq[1 + i] - sv[i], left * wa[i] / wsum);
        sv[i] = sv[i] + add[i];
      }
      left = vmax(left - (add[0] + add[1] + add[2]), zero);
      for (int i = 0; i < 3; ++i) act[i] = dq[1 + i] - sv[i] > eps ? one : zero;
    }
    vf* sq = s.serv_q + p * NQ;
    sq[0] = ef;
    for (int i = 0; i < 3; ++i) sq[1 + i] = sv[i];
  }
  for (int q = 0; q < Q; ++q) {
    const float buf = buffer[q / NQ];
    const vf pk = path_kbit[q / NQ];
    vf dem = s.dem_q[q], served = s.serv_q[q];
    s.frac_q[q] = served / vmax(dem, eps);
    vf left = dem - served;
    vf over = vmin(vmax(left - buf, zero) / vmax(left, eps), one);
    s.over_q[q] = over;
    vf kept = left * (1.0f - over);
    s.kept_q[q] = kept;
    s.delay_q[q] = vmin(kept * dt / vmax(served, eps), max_delay);
    s.util_q[q] = served / pk;
  }
  for (int p = 0; p < P; ++p) {
    const vf* u = s.util_q + p * NQ;
    s.rho_ef[p] = u[0];
    s.rho_all[p] = u[0] + u[1] + u[2] + u[3];
  }
  for (int n = 0; n < N; ++n) {
    vf admit = zero, frac = zero, over = zero;
    for (int q = 0; q < Q; ++q) {
      vi here = s.queue[n] == q;
      admit = here ? s.admit_q[q] : admit;
      frac = here ? s.frac_q[q] : frac;
      over = here ? s.over_q[q] : over;
    }
    vf loss = zero;
    for (int p = 0; p < P; ++p) loss = s.path[n] == p ? path_loss[p] : loss;
    vf served = sc[S_SERVED][n];
    vf x_adm = served * admit;
    vf dem_c = st[ST_QP][n] + x_adm;
    vf deliv = dem_c * frac;
    vf left = dem_c - deliv;
    vf ovp = left * over;
    // A path's own loss (a scheduled event) takes its share of what the queues served.
    vf plost = deliv * loss;
    deliv = deliv - plost;
    st[ST_QP][n] = left - ovp;
    sc[S_XADM][n] = x_adm;
    sc[S_DELIV][n] = deliv;
    sc[S_OVP][n] = ovp;
    sc[S_PLOST][n] = plost;
    // Packet-scale waits: the inputs of the tenant's M/G/1 with priorities and of the path's.
    vf pkt = in[IN_PKT][n], cs2 = in[IN_CS2][n], cap = in[IN_CAP][n];
    vf fluid = pkt * 4.0f / (4.0f * pkt + st[ST_QT][n]);
    sc[S_FLUID][n] = fluid;
    sc[S_RWT][n] = residual_work(served, pkt, cs2, cap);
    sc[S_RHO][n] = served * fluid / cap;
    sc[S_RWP][n] = residual_work(deliv, pkt, cs2, in[IN_PATH_KBIT_C][n]);
  }
  scatter(s.w0_path, sc[S_RWP], s.path, N, P);
  for (int k = 0; k < K; ++k) {
    scatter(s.own + k * P, sc[S_RWP] + k * C, s.path + k * C, C, P);
    vf t = zero;
    for (int c = 0; c < C; ++c) t += sc[S_RWT][k * C + c];
    s.w0_t[k] = t;
  }

  // Waits, losses, the sources' reactions and the accumulators.
  const vf mss = splat(prm[P_MSS]);
  for (int k = 0; k < K; ++k) {
    for (int c = 0; c < C; ++c) {
      const int n = k * C + c;
      vf before, same;  // load of the higher priorities, and of the class's own level
      by_priority(s.priority, sc[S_RHO], k * C, C, n, before, same);
      vf served = sc[S_SERVED][n], pkt = in[IN_PKT][n], cs2 = in[IN_CS2][n];
      vf wait_t = priority_wait(s.w0_t[k], before, before + same, dt, rho_max);
      vf ceil = vmax(in[IN_CEIL][n], splat(1e-9f));
      vf wait_ceil = priority_wait(residual_work(served, pkt, cs2, ceil), zero, served / ceil, dt, rho_max);
      wait_t = vmax(wait_t, wait_ceil) + in[IN_TX_TENANT][n];

      vi pth = s.path[n], qi = s.queue[n];
      vf w0p = zero, own = zero, ef_c = zero, all_c = zero;
      for (int p = 0; p < P; ++p) {
        vi here = pth == p;
        w0p = here ? s.w0_path[p] : w0p;
        own = here ? s.own[k * P + p] : own;
        ef_c = here ? s.rho_ef[p] : ef_c;
        all_c = here ? s.rho_all[p] : all_c;
      }
      vf kept = zero, pdelay = zero;
      for (int q = 0; q < Q; ++q) {
        vi here = qi == q;
        kept = here ? s.kept_q[q] : kept;
        pdelay = here ? s.delay_q[q] : pdelay;
      }
      vf pkc = in[IN_PATH_KBIT_C][n];
      vf ratio = vmin(pkc / in[IN_CAP][n], one);
      vf smooth = 1.0f - ratio * ratio;
      vf w0_c = vmax(w0p - own * (1.0f - smooth), zero);
      vi is_ef = qi % NQ == 0;
      vf wait_p = priority_wait(w0_c, is_ef ? zero : ef_c, is_ef ? ef_c : all_c, dt, rho_max) + in[IN_TX_PATH][n];
      vf micro = wait_t * sc[S_FLUID][n] + wait_p / (1.0f + kept / (4.0f * pkt));
      vf base = in[IN_BASE_DELAY][n];
      vf fixed = base + sc[S_TDELAY][n] + pdelay;
      vf policed = served - sc[S_XADM][n];
      vf path_dropped = sc[S_OVP][n] + sc[S_PLOST][n];
      vf lost = sc[S_NFT][n] + sc[S_OVF][n] + sc[S_CDROP][n] + (policed + path_dropped);
      vf rtt = base + fixed + micro;
      vf off = sc[S_OFF][n];
      vf loss_p = lost / vmax(off, splat(1e-9f));
      // TCP's aggregate window (shaping.traffic.apps.tcp_window_update).
      vf flows = in[IN_FLOWS][n];
      vf win = st[ST_WIN][n] / mss;
      vf grow = flows / rtt * dt;
      vf shrink = vmin(win * win * loss_p / (2.0f * flows * rtt) * dt, 0.5f * win);
      win = vmax(win + grow - shrink, 2.0f * flows);
      st[ST_WIN][n] = vmin(win * mss, in[IN_APP_RATE][n] * rtt);
      st[ST_RTT][n] = rtt;
      // The video player's buffer.
      vf deliv = sc[S_DELIV][n];
      vf got = deliv / vmax(in[IN_BITRATE][n] * dt, splat(1e-9f)) * dt / 1000.0f;
      vf buf = st[ST_BUF][n];
      vf playing = buf > 0.0f ? one : zero;
      st[ST_BUF][n] = vmin(vmax(buf + got - playing * dt / 1000.0f, zero), splat(prm[P_BUF_MAX]));
      // Accumulators.
      st[ST_OFFERED][n] += off;
      st[ST_DELIVERED][n] += deliv;
      st[ST_LOST][n] += lost;
      st[ST_DELAY_VOL][n] += (fixed + micro) * deliv;
      vf slack = vmax(in[IN_DEADLINE][n] - fixed, zero);
      st[ST_ON_TIME][n] += (1.0f - vexp_neg(-slack / vmax(micro, splat(1e-3f)))) * off;
      st[ST_P99][n] = vmax(st[ST_P99][n], fixed + prm[P_LN100] * micro);
      st[ST_REBUFFER][n] += (1.0f - playing) * dt;
      st[ST_ADMITTED][n] += sc[S_XADM][n];
      st[ST_DROPPED][n] += path_dropped;
    }
  }
  for (int q = 0; q < Q; ++q) s.path_served[q] += s.util_q[q];
}

// A tile: J blocks of W lanes. The kernel copies a tile's rows in and out in one go: each row of a
// (K, C, B) array is B floats apart from the next, a power of two in the usual batch sizes, so the
// rows one block reads all fall in the same cache sets; reading J * W lanes of a row at once uses
// every line it fetches (copying in and out block by block took 1.6 times as long).
constexpr int J = 8;
constexpr int T = J * W;

struct Tile {
  // Each block's arrays are contiguous (its inputs, priority, state, path_served, then its queue
  // and path indices), so a block computes on a few KiB, as if it had loaded them itself.
  size_t n, q, stride, index_stride;
  std::vector<vf> storage;
  std::vector<vi> index_storage;

  size_t p;

  Tile(const Dims& d)
      : n(size_t(d.k) * d.c),
        q(size_t(d.p) * NQ),
        stride(n * (N_INPUTS + 1 + N_STATES) + q + size_t(d.p) * N_PATH_INPUTS),
        index_stride(2 * n),
        storage(J * stride),
        index_storage(J * index_stride),
        p(size_t(d.p)) {}

  // Array a (inputs 0..N_INPUTS-1, priority N_INPUTS, state N_INPUTS + 1 + i) of block j.
  vf* array(int j, int a) { return storage.data() + j * stride + a * n; }
  vf* path_served(int j) { return storage.data() + j * stride + (N_INPUTS + 1 + N_STATES) * n; }
  vf* path_input(int j, int i) { return path_served(j) + q + i * p; }
  vi* queue(int j) { return index_storage.data() + j * index_stride; }
  vi* path(int j) { return index_storage.data() + j * index_stride + n; }

  // Point a block at its rows of this tile.
  void select(Block& s, int j) {
    for (int i = 0; i < N_INPUTS; ++i) s.in[i] = array(j, i);
    s.priority = array(j, N_INPUTS);
    for (int i = 0; i < N_STATES; ++i) s.st[i] = array(j, N_INPUTS + 1 + i);
    s.queue = queue(j);
    s.path = path(j);
    s.path_served = path_served(j);
    for (int i = 0; i < N_PATH_INPUTS; ++i) s.path_in[i] = path_input(j, i);
  }
};

// Copy lanes [t0, t0 + nt) of `rows` rows into the tile: block j's rows go to dst(j); lanes past
// nt repeat the last one. Row r starts at src + row_offset(r), its lanes `lane` elements apart
// (0: broadcast).
template <typename T_, typename Dst, typename Offset>
void load_tile(Dst dst, const T_* src, int rows, Offset row_offset, int64_t lane, int64_t t0, int nt) {
  for (int r = 0; r < rows; ++r) {
    const T_* row = src + row_offset(r) + t0 * lane;
    for (int j = 0; j < J; ++j) {
      auto& out = dst(j)[r];
      if (lane == 0) {
        for (int w = 0; w < W; ++w) out[w] = row[0];
      } else if (nt == T && lane == 1) {
        for (int w = 0; w < W; ++w) out[w] = row[j * W + w];
      } else {
        for (int w = 0; w < W; ++w) out[w] = row[std::min(j * W + w, nt - 1) * lane];
      }
    }
  }
}

template <typename T_, typename Src>
void store_tile(T_* dst, Src src, int rows, int64_t b, int64_t t0, int nt) {
  for (int r = 0; r < rows; ++r) {
    T_* row = dst + r * b + t0;
    for (int j = 0; j < J; ++j) {
      const auto& x = src(j)[r];
      if (nt == T) {
        for (int w = 0; w < W; ++w) row[j * W + w] = x[w];
      } else {
        for (int w = 0; w < W && j * W + w < nt; ++w) row[j * W + w] = x[w];
      }
    }
  }
}

}  // namespace

extern "C" {

// Run `substeps` sub-steps of every environment. Element (k, c, b) of inputs[i] is at
// strides[3 i] k + strides[3 i + 1] c + strides[3 i + 2] b (a stride 0 broadcasts); priority is
// (K, C, B) int64 with the same layout as strides[3 N_INPUTS ...]; state_in[i] (K, C, B) is the
// carried state, state_out[i] receives it after the sub-steps (it may alias state_in), followed by
// the accumulators, which start at zero, like path_served (P * 4, B); queue and path are
// (K * C, B) int64; path_inputs are the (P, B) capacity, EF limit and loss of the paths. Returns 0.
int fedshape_substeps(const float* const* inputs, const int64_t* strides, const int64_t* priority,
                      const float* const* state_in, float* const* state_out, float* path_served,
                      const int64_t* queue, const int64_t* path, const float* const* path_inputs,
                      const float* buffer, const float* af_weights, const float* params, int k, int c, int p,
                      int64_t b, int substeps, int threads) {
  const Dims d{k, c, p, b};
  const int n = k * c, q = p * NQ;
  const int64_t tiles = (b + T - 1) / T;
#pragma omp parallel num_threads(threads)
  {
    Block s(d);
    Tile tile(d);
#pragma omp for schedule(static)
    for (int64_t ti = 0; ti < tiles; ++ti) {
      const int64_t t0 = ti * T;
      const int nt = int(std::min<int64_t>(T, b - t0));
      for (int a = 0; a <= N_INPUTS; ++a) {
        const int64_t* sd = strides + 3 * a;
        auto offset = [&](int r) { return (r / c) * sd[0] + (r % c) * sd[1]; };
        auto dst = [&](int j) { return tile.array(j, a); };
        if (a < N_INPUTS) {
          load_tile(dst, inputs[a], n, offset, sd[2], t0, nt);
        } else {
          load_tile(dst, priority, n, offset, sd[2], t0, nt);
        }
      }
      auto dense = [&](int r) { return int64_t(r) * b; };
      for (int i = 0; i < N_CARRIED; ++i) {
        load_tile([&](int j) { return tile.array(j, N_INPUTS + 1 + i); }, state_in[i], n, dense, 1, t0, nt);
      }
      load_tile([&](int j) { return tile.queue(j); }, queue, n, dense, 1, t0, nt);
      load_tile([&](int j) { return tile.path(j); }, path, n, dense, 1, t0, nt);
      for (int i = 0; i < N_PATH_INPUTS; ++i) {
        load_tile([&](int j) { return tile.path_input(j, i); }, path_inputs[i], p, dense, 1, t0, nt);
      }
      for (int j = 0; j * W < nt; ++j) {
        tile.select(s, j);
        for (int i = N_CARRIED; i < N_STATES; ++i) std::fill(s.st[i], s.st[i] + n, vf{});
        std::fill(s.path_served, s.path_served + q, vf{});
        for (int t = 0; t < substeps; ++t) substep(s, d, params, buffer, af_weights);
      }
      for (int i = 0; i < N_STATES; ++i) {
        store_tile(state_out[i], [&](int j) { return tile.array(j, N_INPUTS + 1 + i); }, n, b, t0, nt);
      }
      store_tile(path_served, [&](int j) { return tile.path_served(j); }, q, b, t0, nt);
    }
  }
  return 0;
}
}
"""
