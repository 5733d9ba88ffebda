/**
 * gqaAttention: grouped-query causal self-attention core of LLaMA / Qwen2, from the (rotated)
 * q, k, v projections to the concatenated heads (o_proj is a separate linear).
 *
 * q is [B*T, H*hd] (= [B, T, H, hd]), k and v are [B*T, Hkv*hd]; H % Hkv === 0 and query head h
 * reads key/value head g(h) = floor(h / (H / Hkv)) (transformers' `repeat_kv`: each kv head is
 * shared by H / Hkv consecutive query heads). For each (b, h), with scale 1 / sqrt(hd):
 *   s_ij = q_i . k_j * scale for j <= i (causal), p_i = softmax(s_i) (max subtracted, float64),
 *   o_i = sum_j p_ij v_j.
 * Backward, with do_i the output gradient:
 *   dp_ij = do_i . v_j,  ds_ij = p_ij (dp_ij - sum_j' p_ij' dp_ij'),
 *   dq_i = scale sum_j ds_ij k_j,  dk_j += scale sum_i ds_ij q_i,  dv_j += sum_i p_ij do_i,
 * where dk and dv of kv head g sum the contributions of every query head of its group.
 * With Hkv = H this is GPT-2's causalAttention on split q, k, v (tested). Padding is only on the
 * right, so the causal mask alone keeps real tokens from seeing it.
 */

export interface GqaAttentionCache {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  /** softmax probabilities [B, H, T, T] (upper triangle zero) */
  probs: Float32Array;
}

export interface GqaShape {
  B: number;
  T: number;
  /** query heads */
  H: number;
  /** key/value heads */
  Hkv: number;
  headDim: number;
}

function checkShape(s: GqaShape, q: Float32Array, k: Float32Array, v: Float32Array): void {
  const { B, T, H, Hkv, headDim } = s;
  if (!(Hkv > 0 && H % Hkv === 0)) throw new RangeError(`gqa attention: ${H} query heads, ${Hkv} kv heads`);
  if (q.length !== B * T * H * headDim) throw new RangeError(`gqa attention: q has ${q.length} values`);
  if (k.length !== B * T * Hkv * headDim || v.length !== k.length)
    throw new RangeError(
      `gqa attention: k / v have ${k.length} / ${v.length} values, expected ${B * T * Hkv * headDim}`,
    );
}

export function gqaAttentionForward(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  shape: GqaShape,
): { y: Float32Array; cache: GqaAttentionCache } {
  checkShape(shape, q, k, v);
  const { B, T, H, Hkv, headDim: hd } = shape;
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  const qW = H * hd;
  const kvW = Hkv * hd;
  const y = new Float32Array(B * T * qW);
  const probs = new Float32Array(B * H * T * T);
  const s = new Float64Array(T);
  const acc = new Float64Array(hd);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qOff = h * hd;
      const kvOff = Math.floor(h / group) * hd;
      const pBase = (b * H + h) * T * T;
      for (let i = 0; i < T; i++) {
        const qRow = (b * T + i) * qW + qOff;
        let max = -Infinity;
        for (let j = 0; j <= i; j++) {
          const kRow = (b * T + j) * kvW + kvOff;
          let dot = 0;
          for (let c = 0; c < hd; c++) dot += q[qRow + c] * k[kRow + c];
          s[j] = dot * scale;
          if (s[j] > max) max = s[j];
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) {
          s[j] = Math.exp(s[j] - max);
          sum += s[j];
        }
        acc.fill(0);
        const pRow = pBase + i * T;
        for (let j = 0; j <= i; j++) {
          const p = s[j] / sum;
          probs[pRow + j] = p;
          const vRow = (b * T + j) * kvW + kvOff;
          for (let c = 0; c < hd; c++) acc[c] += p * v[vRow + c];
        }
        for (let c = 0; c < hd; c++) y[qRow + c] = acc[c];
      }
    }
  }
  return { y, cache: { q, k, v, probs } };
}

export function gqaAttentionBackward(
  cache: GqaAttentionCache,
  dy: Float32Array,
  shape: GqaShape,
): { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const { q, k, v, probs } = cache;
  const { B, T, H, Hkv, headDim: hd } = shape;
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  const qW = H * hd;
  const kvW = Hkv * hd;
  // float64 accumulators: dk and dv sum over query positions and over the group's heads
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const dp = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const qOff = h * hd;
      const kvOff = Math.floor(h / group) * hd;
      const pBase = (b * H + h) * T * T;
      for (let i = 0; i < T; i++) {
        const pRow = pBase + i * T;
        const row = (b * T + i) * qW + qOff; // q, dq and do share the [B*T, H*hd] layout
        let dot = 0;
        for (let j = 0; j <= i; j++) {
          const vRow = (b * T + j) * kvW + kvOff;
          const p = probs[pRow + j];
          let d = 0;
          for (let c = 0; c < hd; c++) {
            d += dy[row + c] * v[vRow + c];
            dv[vRow + c] += p * dy[row + c];
          }
          dp[j] = d;
          dot += p * d;
        }
        for (let j = 0; j <= i; j++) {
          const ds = probs[pRow + j] * (dp[j] - dot) * scale;
          if (ds === 0) continue;
          const kRow = (b * T + j) * kvW + kvOff;
          for (let c = 0; c < hd; c++) {
            dq[row + c] += ds * k[kRow + c];
            dk[kRow + c] += ds * q[row + c];
          }
        }
      }
    }
  }
  return { dq: Float32Array.from(dq), dk: Float32Array.from(dk), dv: Float32Array.from(dv) };
}
