/**
 * causalAttention: GPT-2 multi-head self-attention core, from the fused qkv projection to the
 * concatenated heads (c_proj is a separate loraLinear).
 *
 * qkv is [B*T, 3D]: q in columns [0, D), k in [D, 2D), v in [2D, 3D); head h owns columns
 * h*hd .. (h+1)*hd of each, hd = D / H. For each (b, h):
 *   s_ij = q_i . k_j / sqrt(hd) for j <= i (causal), p_i = softmax(s_i) (max subtracted first),
 *   o_i = sum_j p_ij v_j.
 * Backward, with do_i the output gradient:
 *   dv_j = sum_i p_ij do_i,  dp_ij = do_i . v_j,  ds_ij = p_ij (dp_ij - sum_j' p_ij' dp_ij'),
 *   dq_i = sum_j ds_ij k_j / sqrt(hd),  dk_j = sum_i ds_ij q_i / sqrt(hd).
 * Padding is only ever on the right, so a causal mask alone keeps real tokens from seeing it.
 */

export interface AttentionCache {
  qkv: Float32Array;
  /** softmax probabilities [B, H, T, T] (upper triangle zero). */
  probs: Float32Array;
}

export function causalAttentionForward(
  qkv: Float32Array,
  B: number,
  T: number,
  D: number,
  H: number,
): { y: Float32Array; cache: AttentionCache } {
  const hd = D / H;
  const scale = 1 / Math.sqrt(hd);
  const D3 = 3 * D;
  const y = new Float32Array(B * T * D);
  const probs = new Float32Array(B * H * T * T);
  const s = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qOff = h * hd;
      const kOff = D + h * hd;
      const vOff = 2 * D + h * hd;
      const pBase = (b * H + h) * T * T;
      for (let i = 0; i < T; i++) {
        const qRow = (b * T + i) * D3 + qOff;
        let max = -Infinity;
        for (let j = 0; j <= i; j++) {
          const kRow = (b * T + j) * D3 + kOff;
          let dot = 0;
          for (let c = 0; c < hd; c++) dot += qkv[qRow + c] * qkv[kRow + c];
          s[j] = dot * scale;
          if (s[j] > max) max = s[j];
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) {
          s[j] = Math.exp(s[j] - max);
          sum += s[j];
        }
        const pRow = pBase + i * T;
        const yRow = (b * T + i) * D + qOff;
        for (let j = 0; j <= i; j++) {
          const p = s[j] / sum;
          probs[pRow + j] = p;
          const vRow = (b * T + j) * D3 + vOff;
          for (let c = 0; c < hd; c++) y[yRow + c] += p * qkv[vRow + c];
        }
      }
    }
  }
  return { y, cache: { qkv, probs } };
}

export function causalAttentionBackward(
  cache: AttentionCache,
  dy: Float32Array,
  B: number,
  T: number,
  D: number,
  H: number,
): Float32Array {
  const { qkv, probs } = cache;
  const hd = D / H;
  const scale = 1 / Math.sqrt(hd);
  const D3 = 3 * D;
  const dqkv = new Float32Array(B * T * D3);
  const dp = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qOff = h * hd;
      const kOff = D + h * hd;
      const vOff = 2 * D + h * hd;
      const pBase = (b * H + h) * T * T;
      for (let i = 0; i < T; i++) {
        const pRow = pBase + i * T;
        const doRow = (b * T + i) * D + qOff;
        let dot = 0;
        for (let j = 0; j <= i; j++) {
          const vRow = (b * T + j) * D3 + vOff;
          let d = 0;
          for (let c = 0; c < hd; c++) d += dy[doRow + c] * qkv[vRow + c];
          dp[j] = d;
          dot += probs[pRow + j] * d;
          // dv_j += p_ij do_i
          const p = probs[pRow + j];
          for (let c = 0; c < hd; c++) dqkv[vRow + c] += p * dy[doRow + c];
        }
        const qRow = (b * T + i) * D3 + qOff;
        for (let j = 0; j <= i; j++) {
          const ds = probs[pRow + j] * (dp[j] - dot) * scale;
          if (ds === 0) continue;
          const kRow = (b * T + j) * D3 + kOff;
          for (let c = 0; c < hd; c++) {
            dqkv[qRow + c] += ds * qkv[kRow + c];
            dqkv[kRow + c] += ds * qkv[qRow + c];
          }
        }
      }
    }
  }
  return dqkv;
}
