// The conditional affine coupling's forward pass as one fused CPU kernel (an XLA FFI handler).
//
// Computes what `jglow.bijectors.ConditionalCoupling.forward_in_xla` computes (zero padding),
// for every map n, from the weights `ConditionalCoupling.kernel_weights` gives:
//   h1 = relu(conv3x3(xa, kx) [zero padding] + cond_term)     cond_term from the 3x3 small field
//   h2 = relu(h1 @ wmid + bmid)
//   out = conv3x3(h2, kz) [padding with ones] + bz             kz, bz already scaled by exp(3 g)
//   scale = (1 - clamp) * sigmoid(out[:half] + offset) + clamp,  shift = out[half:]
//   y = concat(xa, (xb + shift) * scale),  log_det = sum log scale
// XLA runs these as a dozen passes over arrays of 2-36 channels; here each map's intermediate
// values stay in cache. Two forms (the maps are split over XLA's threads in either):
// - along rows of pixels (coupling_one_map), 16 to a vector register (8 for 8-wide maps), 4
//   output channels at a time: W one of 8, 16, 32, 64, C and HID multiples of 4;
// - 16 maps as the vector lanes (coupling_16_maps), for W <= 8 with C and HID multiples of 16
//   (preferred there).
//
// Shapes: x, y (N, H, W, C); cond (N, min(H, 3), min(W, 3), HID); kx (3, 3, C/2, HID);
// wmid (HID, HID); bmid (HID); kz (3, 3, HID, C); bz (C); log_det (N). float32 throughout.
// Attributes: clamp and offset, the scale rule.
// A map whose input, condition field or weights hold a non-finite value gets NaN outputs.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

template <typename V>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}
template <typename V>
inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <typename V>
inline V splat(float s) { return V{} + s; }
template <typename V>
inline V relu(V v) { return v > 0.0f ? v : 0.0f; }

// Row (or column) of the 3x3 condition field that position `pos` of a side `side` reads.
inline int small_index(int pos, int side) {
  if (side <= 3) return pos;
  return pos == 0 ? 0 : (pos == side - 1 ? 2 : 1);
}

// The coupling's scale from its raw output: (1 - clamp) * sigmoid(raw + offset) + clamp.
inline float coupling_scale(float raw, float clamp, float offset) {
  return (1.0f - clamp) / (1.0f + expf(-(raw + offset))) + clamp;
}

// Whether every value is finite, by the bits (the kernel is compiled with -ffast-math, under
// which std::isfinite may be assumed true).
bool all_finite(const float* values, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    if ((bits & 0x7f800000u) == 0x7f800000u) return false;
  }
  return true;
}

// acc[b] += sum over taps and input channels c of kernel[tap][c][out0 + b] * (channel c of the
// input row rows[tap / 3], shifted by tap % 3): one vector of an output row of a 3x3 convolution,
// 4 outputs at a time. Each of the three padded input rows holds its channels `channel_stride`
// floats apart.
template <typename V>
inline void add_conv3x3_row(V (&acc)[4], const float* const (&rows)[3], int in_channels,
                            int channel_stride, const float* kernel, int out_channels, int out0) {
  for (int tap = 0; tap < 9; ++tap)
    for (int c = 0; c < in_channels; ++c) {
      const V in = load<V>(rows[tap / 3] + (size_t)c * channel_stride + tap % 3);
      const float* weights = kernel + (tap * in_channels + c) * out_channels + out0;
      for (int b = 0; b < 4; ++b) acc[b] += weights[b] * in;
    }
}

struct Shape {
  int height, width, channels, hidden, cond_width;
  int half() const { return channels / 2; }
  int pixels() const { return height * width; }
  int padded_plane() const { return (height + 2) * (width + 2); }
  size_t map_size() const { return (size_t)height * width * channels; }
  size_t cond_size() const { return (size_t)std::min(height, 3) * cond_width * hidden; }
  size_t scratch_floats() const {  // enough for either kernel
    const size_t rows = (size_t)half() * padded_plane() + (size_t)4 * hidden * width +
                        (size_t)3 * hidden * (width + 2) + (size_t)channels * height * width;
    const size_t lanes = (size_t)16 * (map_size() + cond_size() + hidden + (size_t)pixels() * hidden +
                                       channels);
    return std::max(rows, lanes);
  }
};

// Whether pixel (i, j) lies inside the map (a tap outside it reads the padding).
inline bool inside_map(int i, int j, const Shape& s) {
  return i >= 0 && i < s.height && j >= 0 && j < s.width;
}

struct Weights {
  const float *kx, *wmid, *bmid, *kz, *bz;
  float clamp, offset;  // the scale rule (coupling_scale)
  const float* zero_padding;  // (H*W, C): the ZeroConv's taps on the padding, for coupling_16_maps
};

// One map; `NV` vectors `V` of pixels per row (W = NV · lanes of V). Returns the log-det.
// h2 is computed row by row into a ring of three padded rows, and the ZeroConv's output row
// i - 1 is taken as soon as row i exists, so the hidden values stay in the L1 cache.
template <typename V, int NV>
float coupling_one_map(const float* __restrict x, const float* __restrict cond, const Weights& w,
                       const Shape& s, float* __restrict y, float* __restrict scratch) {
  constexpr int L = sizeof(V) / sizeof(float), W = L * NV, Wp = W + 2;
  const int H = s.height, C = s.channels, HID = s.hidden, half = s.half();
  const int plane = s.padded_plane(), ring_row = HID * Wp;
  float* xa = scratch;                           // (half, H+2, W+2), zero padding
  float* cond_rows = xa + (size_t)half * plane;  // (3, HID, W): cond_term rows by row class
  float* h1 = cond_rows + (size_t)3 * HID * W;   // (HID, L): one vector of a row of h1
  float* ring = h1 + (size_t)HID * W;            // (3, HID, W+2): rows of h2, padding with ones
  float* out = ring + (size_t)3 * ring_row;      // (C, H, W)
  auto ring_slot = [&](int row) { return ring + (size_t)((row + 3) % 3) * ring_row; };  // row >= -1

  std::fill(xa, xa + (size_t)half * plane, 0.0f);
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j)
      for (int c = 0; c < half; ++c)
        xa[(size_t)c * plane + (i + 1) * Wp + j + 1] = x[((size_t)i * W + j) * C + c];
  for (int r = 0; r < std::min(H, 3); ++r)
    for (int k = 0; k < HID; ++k)
      for (int j = 0; j < W; ++j)
        cond_rows[((size_t)r * HID + k) * W + j] =
            cond[((size_t)r * s.cond_width + small_index(j, W)) * HID + k];
  std::fill(ring, ring + (size_t)3 * ring_row, 1.0f);  // row -1 and every padding column

  // Each row is taken one vector of pixels at a time: with the accumulators of two vectors live
  // at once, 60 maps of 32x32x4 took 2.6 ms on one core instead of 1.65 ms.
  auto hidden_row = [&](int i) {  // h2 row i into its ring slot
    const float* cond_row = cond_rows + (size_t)small_index(i, H) * HID * W;
    float* h2_row = ring_slot(i);
    for (int v = 0; v < NV; ++v) {
      const int j0 = L * v;
      const float* const xa_rows[3] = {xa + i * Wp + j0, xa + (i + 1) * Wp + j0, xa + (i + 2) * Wp + j0};
      for (int k0 = 0; k0 < HID; k0 += 4) {  // first conv, 4 hidden channels at a time
        V acc[4];
        for (int b = 0; b < 4; ++b) acc[b] = load<V>(cond_row + (k0 + b) * W + j0);
        add_conv3x3_row<V>(acc, xa_rows, half, plane, w.kx, HID, k0);
        for (int b = 0; b < 4; ++b) store(h1 + (k0 + b) * L, relu<V>(acc[b]));
      }
      for (int k0 = 0; k0 < HID; k0 += 4) {  // 1x1 conv
        V acc[4];
        for (int b = 0; b < 4; ++b) acc[b] = splat<V>(w.bmid[k0 + b]);
        for (int k = 0; k < HID; ++k) {
          const V in = load<V>(h1 + k * L);
          for (int b = 0; b < 4; ++b) acc[b] += w.wmid[k * HID + k0 + b] * in;
        }
        for (int b = 0; b < 4; ++b) store(h2_row + (k0 + b) * Wp + 1 + j0, relu<V>(acc[b]));
      }
    }
  };
  auto output_row = [&](int i) {  // ZeroConv row i from h2 rows i - 1, i, i + 1
    for (int v = 0; v < NV; ++v) {
      const int j0 = L * v;
      const float* const h2_rows[3] = {ring_slot(i - 1) + j0, ring_slot(i) + j0, ring_slot(i + 1) + j0};
      for (int c0 = 0; c0 < C; c0 += 4) {  // 4 output channels at a time
        V acc[4];
        for (int b = 0; b < 4; ++b) acc[b] = splat<V>(w.bz[c0 + b]);
        add_conv3x3_row<V>(acc, h2_rows, HID, Wp, w.kz, C, c0);
        for (int b = 0; b < 4; ++b) store(out + ((size_t)(c0 + b) * H + i) * W + j0, acc[b]);
      }
    }
  };
  for (int i = 0; i < H; ++i) {
    hidden_row(i);
    if (i > 0) output_row(i - 1);
  }
  std::fill(ring_slot(H), ring_slot(H) + ring_row, 1.0f);  // row H: padding
  output_row(H - 1);

  const int pixels = H * W;
  float log_det = 0.0f;
  for (int c = 0; c < half; ++c) {  // the scale, in place of the raw scale (vectorised exp, log)
    float* scale = out + (size_t)c * pixels;
#pragma omp simd reduction(+ : log_det)
    for (int p = 0; p < pixels; ++p) {
      scale[p] = coupling_scale(scale[p], w.clamp, w.offset);
      log_det += logf(scale[p]);
    }
  }
  for (int p = 0; p < pixels; ++p)
    for (int c = 0; c < half; ++c) {
      y[(size_t)p * C + c] = x[(size_t)p * C + c];
      y[(size_t)p * C + half + c] = (x[(size_t)p * C + half + c] + out[(size_t)(half + c) * pixels + p]) *
                                    out[(size_t)c * pixels + p];
    }
  return log_det;
}

// Up to 16 maps of a coarse level (any H and W; C a multiple of 16, HID of 16): the maps are the
// vector lanes, so every vector is full whatever the field's size, and taps that fall outside the
// map are skipped (the ZeroConv's padding with ones enters as `w.zero_padding`). Lanes past
// `count` compute zeros that are not written out.
void coupling_16_maps(const float* __restrict x, const float* __restrict cond, int count,
                      const Weights& w, const Shape& s, float* __restrict y,
                      float* __restrict log_det, float* __restrict scratch) {
  const int H = s.height, W = s.width, P = s.pixels(), C = s.channels, HID = s.hidden;
  const int half = s.half();
  float* xl = scratch;                             // (P, C, 16)
  float* cl = xl + (size_t)16 * s.map_size();      // (cond pixels, HID, 16)
  float* h1 = cl + (size_t)16 * s.cond_size();     // (HID, 16): one pixel
  float* h2 = h1 + (size_t)16 * HID;               // (P, HID, 16)
  float* out = h2 + (size_t)16 * P * HID;          // (C, 16): one pixel
  std::fill(xl, xl + (size_t)16 * (s.map_size() + s.cond_size()), 0.0f);
  for (int l = 0; l < count; ++l) {
    for (size_t e = 0; e < s.map_size(); ++e) xl[e * 16 + l] = x[l * s.map_size() + e];
    for (size_t e = 0; e < s.cond_size(); ++e) cl[e * 16 + l] = cond[l * s.cond_size() + e];
  }
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const float* cond_pixel = cl + (size_t)(small_index(i, H) * s.cond_width + small_index(j, W)) * HID * 16;
      for (int k0 = 0; k0 < HID; k0 += 16) {  // first conv, 16 hidden channels at a time
        v16 acc[16];
        for (int b = 0; b < 16; ++b) acc[b] = load<v16>(cond_pixel + (k0 + b) * 16);
        for (int tap = 0; tap < 9; ++tap) {
          const int qi = i + tap / 3 - 1, qj = j + tap % 3 - 1;
          if (!inside_map(qi, qj, s)) continue;  // zero padding
          for (int c = 0; c < half; ++c) {
            const v16 in = load<v16>(xl + ((size_t)(qi * W + qj) * C + c) * 16);
            const float* weights = w.kx + (tap * half + c) * HID + k0;
            for (int b = 0; b < 16; ++b) acc[b] += weights[b] * in;
          }
        }
        for (int b = 0; b < 16; ++b) store(h1 + (k0 + b) * 16, relu<v16>(acc[b]));
      }
      float* h2_pixel = h2 + (size_t)(i * W + j) * HID * 16;
      for (int k0 = 0; k0 < HID; k0 += 16) {  // 1x1 conv
        v16 acc[16];
        for (int b = 0; b < 16; ++b) acc[b] = splat<v16>(w.bmid[k0 + b]);
        for (int k = 0; k < HID; ++k) {
          const v16 in = load<v16>(h1 + k * 16);
          for (int b = 0; b < 16; ++b) acc[b] += w.wmid[k * HID + k0 + b] * in;
        }
        for (int b = 0; b < 16; ++b) store(h2_pixel + (k0 + b) * 16, relu<v16>(acc[b]));
      }
    }

  v16 log_det_lanes = splat<v16>(0.0f);
  for (int i = 0; i < H; ++i)
    for (int j = 0; j < W; ++j) {
      const int p = i * W + j;
      for (int c0 = 0; c0 < C; c0 += 8) {  // ZeroConv, 8 output channels at a time
        v16 acc[8];
        for (int b = 0; b < 8; ++b) acc[b] = splat<v16>(w.bz[c0 + b] + w.zero_padding[p * C + c0 + b]);
        for (int tap = 0; tap < 9; ++tap) {
          const int qi = i + tap / 3 - 1, qj = j + tap % 3 - 1;
          if (!inside_map(qi, qj, s)) continue;
          for (int k = 0; k < HID; ++k) {
            const v16 in = load<v16>(h2 + ((size_t)(qi * W + qj) * HID + k) * 16);
            const float* weights = w.kz + (tap * HID + k) * C + c0;
            for (int b = 0; b < 8; ++b) acc[b] += weights[b] * in;
          }
        }
        for (int b = 0; b < 8; ++b) store(out + (c0 + b) * 16, acc[b]);
      }
      for (int c = 0; c < half; ++c) {  // scale, shift, log-det along the lanes
        const float* raw = out + c * 16;
        const float* shift = out + (half + c) * 16;
        const float* xb = xl + ((size_t)p * C + half + c) * 16;
        float scale[16], yb[16], log_scale[16];
#pragma omp simd
        for (int l = 0; l < 16; ++l) {
          scale[l] = coupling_scale(raw[l], w.clamp, w.offset);
          log_scale[l] = logf(scale[l]);
          yb[l] = (xb[l] + shift[l]) * scale[l];
        }
        log_det_lanes += load<v16>(log_scale);
        for (int l = 0; l < count; ++l) {
          y[l * s.map_size() + (size_t)p * C + c] = x[l * s.map_size() + (size_t)p * C + c];
          y[l * s.map_size() + (size_t)p * C + half + c] = yb[l];
        }
      }
    }
  float lanes[16];
  store(lanes, log_det_lanes);
  for (int l = 0; l < count; ++l) log_det[l] = lanes[l];
}

// The ZeroConv's taps that fall on the padding (ones), summed per output pixel: (H*W, C).
std::vector<float> zero_padding_terms(const float* kz, const Shape& s) {
  std::vector<float> terms((size_t)s.pixels() * s.channels, 0.0f);
  for (int i = 0; i < s.height; ++i)
    for (int j = 0; j < s.width; ++j)
      for (int tap = 0; tap < 9; ++tap) {
        const int qi = i + tap / 3 - 1, qj = j + tap % 3 - 1;
        if (inside_map(qi, qj, s)) continue;
        for (int k = 0; k < s.hidden; ++k)
          for (int c = 0; c < s.channels; ++c)
            terms[(size_t)(i * s.width + j) * s.channels + c] += kz[(tap * s.hidden + k) * s.channels + c];
      }
  return terms;
}

using MapKernel = float (*)(const float*, const float*, const Weights&, const Shape&, float*, float*);

// The kernel along rows for widths 8, 16, 32 and 64 (multiples of 4 channels and hidden
// channels), or none.
MapKernel row_kernel_for(int width, int channels, int hidden) {
  if (channels % 4 || hidden % 4) return nullptr;
  switch (width) {
    case 8: return coupling_one_map<v8, 1>;
    case 16: return coupling_one_map<v16, 1>;
    case 32: return coupling_one_map<v16, 2>;
    case 64: return coupling_one_map<v16, 4>;
    default: return nullptr;
  }
}

// The maps as lanes for fields up to 8 pixels wide with multiples of 16 channels and hidden
// channels (at the paper model's 8x8 level, 20-21 ms against 25-31 ms along rows for 225 maps).
bool lanes_kernel_applies(const Shape& s) {
  return s.width <= 8 && s.channels % 16 == 0 && s.hidden % 16 == 0;
}

ffi::Error CouplingForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> cond,
                           ffi::Buffer<ffi::F32> kx, ffi::Buffer<ffi::F32> wmid,
                           ffi::Buffer<ffi::F32> bmid, ffi::Buffer<ffi::F32> kz,
                           ffi::Buffer<ffi::F32> bz, float clamp, float offset,
                           ffi::ResultBuffer<ffi::F32> y,
                           ffi::ResultBuffer<ffi::F32> log_det) {
  const auto xd = x.dimensions(), cd = cond.dimensions();
  if (xd.size() != 4 || cd.size() != 4 || cd[0] != xd[0])
    return ffi::Error::InvalidArgument("jglow_coupling_forward: x (N,H,W,C), cond (N,h,w,HID)");
  const int n_maps = xd[0];
  const Shape s{(int)xd[1], (int)xd[2], (int)xd[3], (int)cd[3], (int)cd[2]};
  const bool by_lanes = lanes_kernel_applies(s);
  const MapKernel row_kernel = by_lanes ? nullptr : row_kernel_for(s.width, s.channels, s.hidden);
  if ((!row_kernel && !by_lanes) || cd[1] != std::min(s.height, 3) || cd[2] != std::min(s.width, 3))
    return ffi::Error::InvalidArgument("jglow_coupling_forward: unsupported shape");
  const std::vector<float> zero_padding =
      by_lanes ? zero_padding_terms(kz.typed_data(), s) : std::vector<float>();
  const Weights w{kx.typed_data(), wmid.typed_data(), bmid.typed_data(), kz.typed_data(),
                  bz.typed_data(), clamp, offset, zero_padding.data()};
  const bool weights_finite =
      all_finite(w.kx, kx.element_count()) && all_finite(w.wmid, wmid.element_count()) &&
      all_finite(w.bmid, bmid.element_count()) && all_finite(w.kz, kz.element_count()) &&
      all_finite(w.bz, bz.element_count()) && all_finite(&clamp, 1) && all_finite(&offset, 1);

  // Blocks of maps: one map for the row kernel, 16 for the lanes kernel.
  const int block = by_lanes ? 16 : 1, n_blocks = (n_maps + block - 1) / block;
  auto run_blocks = [&](int begin, int end) {
    std::vector<float> scratch(s.scratch_floats());
    for (int b = begin; b < end; ++b) {
      const int first = b * block, count = std::min(block, n_maps - first);
      const float* x_b = x.typed_data() + first * s.map_size();
      const float* cond_b = cond.typed_data() + first * s.cond_size();
      float* y_b = y->typed_data() + first * s.map_size();
      float* log_det_b = log_det->typed_data() + first;
      if (by_lanes) {
        coupling_16_maps(x_b, cond_b, count, w, s, y_b, log_det_b, scratch.data());
      } else {
        log_det_b[0] = row_kernel(x_b, cond_b, w, s, y_b, scratch.data());
      }
      for (int n = 0; n < count; ++n) {  // a non-finite input or weight: NaN, as with XLA
        if (weights_finite && all_finite(x_b + n * s.map_size(), s.map_size()) &&
            all_finite(cond_b + n * s.cond_size(), s.cond_size()))
          continue;
        std::fill(y_b + n * s.map_size(), y_b + (n + 1) * s.map_size(), NAN);
        log_det_b[n] = NAN;
      }
    }
  };
  // The blocks are split into as many parts as XLA has intra-op threads (one per core). The calling
  // thread and the pool's tasks claim parts until none is left, so the call finishes even if the
  // pool's threads are all busy (another kernel call waiting the same way): it never waits for a
  // part that no thread has started. A task that starts after the call has returned finds no part
  // left and touches only the shared counters.
  struct Parts {
    std::atomic<int> next{0}, finished{0};
  };
  const int parts = std::max<int64_t>(1, std::min<int64_t>(n_blocks, pool.num_threads()));
  auto counters = std::make_shared<Parts>();
  auto claim_parts = [counters, parts, n_blocks, &run_blocks] {
    for (int p; (p = counters->next.fetch_add(1)) < parts;) {
      run_blocks(n_blocks * p / parts, n_blocks * (p + 1) / parts);
      counters->finished.fetch_add(1, std::memory_order_release);
    }
  };
  for (int p = 1; p < parts; ++p) pool.Schedule([claim_parts] { claim_parts(); });
  claim_parts();
  while (counters->finished.load(std::memory_order_acquire) != parts) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jglow_coupling_forward, CouplingForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cond
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kx
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wmid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bmid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kz
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bz
                                  .Attr<float>("clamp")
                                  .Attr<float>("offset")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y
                                  .Ret<ffi::Buffer<ffi::F32>>());  // log_det
